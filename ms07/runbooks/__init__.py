"""The troubleshooting guide's procedures as YAML runbooks: load, validate, run, export.

    from ms07 import runbooks
    book = runbooks.load("queue-message-loss")       # by id, or a path; validated
    result = await runbooks.run(book, settings, dry_run=True)
    result.status, result.to_dict()

A runbook's steps are ``ms07`` command lines, parsed by the CLI's own parser and run
through the library (:mod:`ms07.runbooks.commands`); ``when:`` and ``expect:`` are a
small expression language over what earlier steps found (:mod:`ms07.runbooks.expr`).
"""

from __future__ import annotations

from ms07.runbooks.loader import files, find, load, load_all, parse, runbooks_dir, search_path
from ms07.runbooks.model import PHASES, PRIORITIES, TEAMS, Runbook, Step
from ms07.runbooks.render import markdown
from ms07.runbooks.runner import Observer, RunbookRun, StepRun, new_run_id, run

__all__ = [
    "PHASES",
    "PRIORITIES",
    "TEAMS",
    "Observer",
    "Runbook",
    "RunbookRun",
    "Step",
    "StepRun",
    "files",
    "find",
    "load",
    "load_all",
    "markdown",
    "new_run_id",
    "parse",
    "run",
    "runbooks_dir",
    "search_path",
]
