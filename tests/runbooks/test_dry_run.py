"""What a dry run says (issue 21): a problem found is not PASSED, the exit code says a
problem was found, and the summary says what a real run would and would not change.
Without Kubernetes, a procedure that needs it says so once and what works instead."""

from __future__ import annotations

from pathlib import Path

import redis

from ms07 import keys
from tests.support import cli

BOOK = """\
id: dlq-only
title: Parked distributions
severity: {priority: P3, response_time: 4h}
escalation: {team: sre, email: sre@zenia.it}
symptoms: [distributions parked]
diagnose:
  - run: ms07 diagnose queue
remediation:
  - run: ms07 recover reclaim-pending --yes
    when: finding('queue.dead_consumers')
verification:
  - run: ms07 diagnose queue
    expect: not finding('queue.dlq')
prevention: [watch it]
"""


def test_dry_run_whose_only_remediation_is_skipped_says_a_real_run_fixes_nothing(
    tmp_path: Path, env_for: dict[str, str], redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create(keys.stream("default"), keys.GROUP, id="0", mkstream=True)
    r.xadd(keys.DLQ, {"distribution_id": "x", "reason": "permanent_failure"})
    r.close()
    book = tmp_path / "dlq-only.yaml"
    book.write_text(BOOK)
    res = cli(["runbook", "run", str(book), "--dry-run"], env_for)
    out = " ".join(res.stdout.split())
    assert res.exit_code == 1, res.output  # a problem was found: no all-clear for a monitor
    assert "PASSED warning" not in out and "FOUND warning" in out
    assert "problem found at step(s) 1" in out
    assert "a real run would change nothing: no remediation step would run" in out
    assert "a real run would skip step 2 (ms07 recover reclaim-pending --yes): when:" in out
    assert "verification not met at step(s) 3: a real run would not fix it" in out
    assert "run without --dry-run to fix" not in out


def test_worker_crash_without_kubernetes_says_so_once_and_what_works_here(
    tmp_path: Path, env_for: dict[str, str]
) -> None:
    env = {**env_for, "KUBECONFIG": str(tmp_path / "no-kubeconfig"), "KUBERNETES_SERVICE_HOST": None}
    res = cli(["recover", "worker-crash", "--dry-run"], env)
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert out.count("no usable configuration") == 1, res.output
    assert "this procedure needs a Kubernetes cluster and none is configured here" in out
    assert "next: ms07 health" in out and "systemctl status ms07" in out
    assert "next: ms07 recover worker-crash --dry-run" not in out

    res = cli(["runbook", "run", "worker-crash", "--dry-run"], env)
    out = " ".join(res.stdout.split())
    assert res.exit_code == 1
    assert out.count("no usable configuration") <= 2, res.stdout  # as the step runs, in the summary
    assert "next: ms07 health" in out
    assert "next: ms07 recover worker-crash --dry-run" not in out
