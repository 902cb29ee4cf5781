"""Operator services: what the commands and the API do on behalf of a person, each a
library function a test or a runbook can call without the CLI.

- ``submit``: accept distributions (one commit, idempotency keys claimed by the insert)
- ``status``: one distribution, its attempts; id prefixes
- ``search``: the history, filtered, in keyset pages
- ``replay``: send again what a filter selects (frozen, audited, resumable)
- ``dlq``: the dead-letter queue: list, replay, purge
- ``destinations``: ``ms07 destinations``: list, sync, check
- ``backup``: the queue's backup and its all-or-nothing restore
- ``healthcheck``: the client of the engine's health endpoints (``ms07 health``)
"""
