"""Conveyor against the Redis job queues and MLServer: see __main__.py and bench/README.md.

Imports nothing: the drivers import this package inside the peers' own environments.
"""
