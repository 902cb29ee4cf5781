"""bench/chaos.py, short: 2 engines for 30 seconds under SIGKILLs, a PostgreSQL restart, a
Redis restart and a FLUSHALL, against a sink failing 30% and hanging 5%. Nothing lost,
nothing parked, and the kills caught engines holding entries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.harness import REPORT
from tests.faults.ledger import Row

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(170)
def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.chaos", "--minutes", "0.5", "--engines", "2", "--rate", "30", "--seed", "7",
         "--settle-seconds", "60", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    REPORT.append(Row(report["ledger"]))
    print(report["table"], report["summary"], report["faults_table"], sep="\n")
    assert report["problems"] == [], report["summary"]
    assert report["lost"] == [], report["summary"]
    assert report["settled"] and report["passed"] and proc.returncode == 0, proc.stdout[-3000:]
    kinds = [f["kind"] for f in report["faults"]]
    assert {"postgres restart", "redis restart", "redis flushall"} <= set(kinds)
    assert kinds.count("SIGKILL engine") >= 2
    # The kills took work down with them (an engine killed while idle proves nothing).
    kills = [f for f in report["faults"] if f["kind"] == "SIGKILL engine"]
    assert report["kills_that_hit"] >= 1 and any(f["touched"] for f in kills)
    # Almost every submit the client tried was accepted, and every accepted one (the
    # indeterminate ones too) was delivered: the sink fails 30% of requests, but with 20
    # attempts nothing is parked (the ledger also bounds the DLQ by the faults).
    assert report["ledger"]["submitted"] >= 0.9 * report["tried"], report["summary"]
    assert report["ledger"]["delivered"] == report["ledger"]["submitted"] + report["indeterminate"], report["summary"]
    assert report["in_dlq"] == 0, report["summary"]
