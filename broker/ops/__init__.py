"""Operator reports, for ``conveyor inspect`` and ``conveyor dlq``; workers and clients never
call them.

- ``fleet_report``: what ``conveyor inspect`` shows (a snapshot's figures, delivery rates);
- ``fleet_snapshot``: gathering that snapshot from Redis in few round trips, read-only;
- ``dead_letters``: list, show, retry and purge a model's dead letters.
"""
