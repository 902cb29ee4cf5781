"""Job and attempt statuses have one home, ms07/store/status.py: the enums match the
schema, and no job status is spelled as a string literal anywhere else in ms07/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ms07.store.status import HELD, OPEN, OPEN_SQL, PARKED, TERMINAL, TERMINAL_SQL, AttemptStatus, JobStatus

ROOT = Path(__file__).resolve().parents[2]
MS07 = ROOT / "ms07"
HOME = "store/status.py"


# The same words in other vocabularies, each a different idea from a job's status.
OTHER_VOCABULARIES = {
    "metrics.py": {"failed"},  # the requests/attempts metric labels
    "cli/health.py": {"delivered", "failed"},  # a worker's counters in /health
    "engine/health.py": {"delivered", "failed", "dead"},  # a worker's counters and heartbeat status
    "store/heartbeats.py": {"dead"},  # a worker's heartbeat status
    "recover/reclaim.py": {"dead"},  # a consumer without a heartbeat
    "recover/plan.py": {"failed"},  # a plan step's result
    "cli/recover_render.py": {"failed"},  # a plan step's result
    "levels.py": {"failed"},  # a step's or check's verdict word
    "cli/runbook.py": {"failed"},  # a runbook step's state
    "runbooks/": {"failed"},
    "diagnose/auth.py": {"failed"},  # a probe's verdict
    "diagnose/latency.py": {"failed"},  # a column header (failed attempts)
    "diagnose/runner.py": {"failed"},  # the finding of a check that raised
    "engine/committer.py": {"failed"},  # the requests metric label
    "engine/policy.py": {"failed"},  # the attempts metric label
    "engine/upkeep.py": {"failed"},  # the requests metric label (poison entries)
    "engine/live.py": {"paused"},  # a destination's paused flag (destinations.paused)
    "ops/dest_admin.py": {"paused", "dead"},  # a destination's paused flag; the open=dead action
    "ops/destinations.py": {"paused"},  # a destination's paused flag
    "cli/destinations.py": {"paused"},  # a destination's paused flag
    # a per-minute count of successful attempts; a destination's paused flag
    "console/data.py": {"delivered", "paused"},
    "diagnose/retention.py": {"delivered"},  # a finding's label for the delivered jobs' age
    "diagnose/queue.py": {"paused"},  # a destination's paused state, in a finding
}

_QUOTED = re.compile("'(" + "|".join(s.value for s in JobStatus) + ")'")


def _allowed(rel: str, value: str) -> bool:
    return any(rel.startswith(prefix) and value in words for prefix, words in OTHER_VOCABULARIES.items())


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _literals(path: Path) -> list[tuple[int, str]]:
    """(line, status) of every job status spelled in a string: a whole string equal to one
    (Python) or one quoted inside a string (SQL). Docstrings and comments are prose."""
    tree = ast.parse(path.read_text())
    prose = _docstrings(tree)
    values = {s.value for s in JobStatus}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if node.value in values:
                out.append((node.lineno, node.value))
            out += [(node.lineno, m) for m in _QUOTED.findall(node.value)]
    return out


def test_no_job_status_literal_outside_its_home() -> None:
    found = []
    for path in sorted(MS07.rglob("*.py")):
        rel = path.relative_to(MS07).as_posix()
        if rel == HOME:
            continue
        found += [f"ms07/{rel}:{line}: {value!r}" for line, value in _literals(path) if not _allowed(rel, value)]
    assert found == [], "use ms07.store.status (JobStatus, OPEN, PARKED, TERMINAL, *_SQL):\n" + "\n".join(found)


def test_the_check_catches_a_literal(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text('"""Docstring: \'queued\' is prose."""\n'
                      'A = "dead"\nB = f"x {A}"\nSQL = "SELECT 1 WHERE status IN (\'failed\', \'dead\')"\n')
    assert _literals(sample) == [(2, "dead"), (4, "failed"), (4, "dead")]


def test_the_enums_are_the_schemas_values() -> None:
    schema = (MS07 / "store" / "migrations" / "0001_initial.sql").read_text()
    jobs = re.search(r"CREATE TABLE distribution_jobs.*?CHECK \(status IN \(([^)]*)\)\)", schema, re.S)
    attempts = re.search(r"CREATE TABLE distribution_attempts.*?CHECK \(status IN \(([^)]*)\)\)", schema, re.S)
    assert jobs and attempts
    # A later migration may widen the job CHECK: the last one that does is the schema's.
    for later in sorted((MS07 / "store" / "migrations").glob("0*.sql"))[1:]:
        widened = re.search(r"distribution_jobs_status_check\s+CHECK \(status IN \(([^)]*)\)\)", later.read_text())
        jobs = widened or jobs
    assert set(re.findall(r"'(\w+)'", jobs.group(1))) == {s.value for s in JobStatus}
    assert set(re.findall(r"'(\w+)'", attempts.group(1))) == {s.value for s in AttemptStatus}


def test_the_groups() -> None:
    assert OPEN == {JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.PROCESSING}
    assert PARKED == {JobStatus.FAILED, JobStatus.DEAD}
    assert TERMINAL == PARKED | {JobStatus.DELIVERED}
    assert HELD == {JobStatus.PAUSED}
    assert not OPEN & TERMINAL and not HELD & (OPEN | TERMINAL) and OPEN | HELD | TERMINAL == set(JobStatus)
    # The partial index of open jobs is declared with this very list (its order too).
    schema = (MS07 / "store" / "migrations" / "0001_initial.sql").read_text()
    assert f"WHERE status IN {OPEN_SQL};" in schema
    assert TERMINAL_SQL == "('delivered', 'failed', 'dead')"
    assert "processing" in OPEN and JobStatus.DEAD == "dead"  # members are the DB strings
