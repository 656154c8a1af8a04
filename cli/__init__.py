"""conveyor.cli"""
