from conveyor.cli.app import main

main()
