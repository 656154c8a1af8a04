"""MLServer 1.7.1 on the bench-noop model (see driver.py)."""
