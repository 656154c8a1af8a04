"""Operator reports and actions, for ``conveyor inspect``, ``conveyor dlq`` and the dashboard;
workers and clients never call them.

- ``fleet_report``: what ``conveyor inspect`` shows (a snapshot's figures, delivery rates);
- ``fleet_snapshot``: gathering that snapshot from Redis in few round trips, read-only;
- ``dead_letters``: list, show, retry and purge a model's dead letters;
- ``control``: load or unload a model on the workers that have it (the dashboard's buttons).
"""
