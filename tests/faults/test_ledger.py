"""The ledger itself: each way to lose a distribution is counted, and each consistency
check fails when its witnesses disagree. Pure logic on hand-built runs; the fault tests
and bench/chaos.py feed it real ones."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.faults.ledger import Job, Ledger, RedisFault

pytestmark = pytest.mark.faults

T = 1_000_000.0  # an epoch second


def _dlq(reason: str, code: str) -> dict[str, str]:
    return {"reason": reason, "error_code": code}


def run(jobs: dict[str, Job], *, submitted: set[str] | None = None, delivered: set[str] = frozenset(),  # type: ignore[assignment]
        dlq: dict[str, dict[str, str]] | None = None, **kw: object) -> Ledger:
    return Ledger("t", set(jobs) if submitted is None else submitted, Counter(delivered), jobs, dlq or {},
                  **kw)  # type: ignore[arg-type]


def test_a_clean_run_passes() -> None:
    lg = run({"a": Job("delivered", None, T), "b": Job("dead", "HTTP_5XX", T)}, delivered={"a"},
             dlq={"b": _dlq("max_retries_exceeded", "HTTP_5XX")}, allowed_dlq={"max_retries_exceeded": 1})
    assert lg.problems() == []
    assert (lg.delivered, lg.in_dlq, lg.lost) == ({"a"}, {"b"}, set())
    lg.check()


def test_a_job_parked_with_no_dlq_entry_is_lost() -> None:
    lg = run({"a": Job("dead", "HTTP_5XX", T)}, allowed_dlq={"max_retries_exceeded": 1})
    assert lg.lost == {"a"} and lg.in_dlq == set()
    assert any("parked jobs have no DLQ entry" in p for p in lg.problems())
    with pytest.raises(AssertionError):
        lg.check()


def test_a_flushall_explains_the_dlq_entries_written_before_it_only() -> None:
    flush = RedisFault("redis flushall", T + 10, T + 10.1)
    jobs = {"before": Job("dead", "HTTP_5XX", T + 9), "after": Job("dead", "HTTP_5XX", T + 11)}
    lg = run(jobs, redis_faults=[flush], allowed_dlq={"max_retries_exceeded": 2})
    assert lg.in_dlq == {"before"} and lg.lost == {"after"}


def test_a_redis_sigkill_explains_the_last_aof_second_only() -> None:
    kill = RedisFault("redis restart", T + 100, T + 102)
    jobs = {"long before": Job("failed", "HTTP_4XX", T + 90), "just before": Job("failed", "HTTP_4XX", T + 99)}
    lg = run(jobs, redis_faults=[kill], allowed_dlq={"permanent_failure": 2})
    assert lg.in_dlq == {"just before"} and lg.lost == {"long before"}


def test_an_accepted_but_unanswered_submit_must_settle() -> None:
    jobs = {"a": Job("delivered", None, T), "unanswered": Job("queued", None)}
    lg = run(jobs, submitted={"a"}, delivered={"a"})
    assert lg.indeterminate == {"unanswered"}
    assert lg.lost == {"unanswered"}
    settled = run({**jobs, "unanswered": Job("delivered", None, T)}, submitted={"a"}, delivered={"a", "unanswered"})
    assert settled.lost == set() and settled.delivered == {"a", "unanswered"}
    assert settled.row()["indeterminate"] == 1
    settled.check()


def test_the_dlq_is_bounded_by_the_faults_injected() -> None:
    jobs = {f"p{i}": Job("dead", "HTTP_5XX", T) for i in range(3)}
    dlq = {i: _dlq("max_retries_exceeded", "HTTP_5XX") for i in jobs}
    assert any("more than the 0 the injected faults explain" in p for p in run(jobs, dlq=dlq).problems())
    assert any("more than the 2" in p for p in run(jobs, dlq=dlq, allowed_dlq={"max_retries_exceeded": 2}).problems())
    assert run(jobs, dlq=dlq, allowed_dlq={"max_retries_exceeded": 3}).problems() == []
    # A bound on one reason does not admit another.
    poison = {"x": Job("dead", "POISON_MESSAGE", T)}
    assert run(poison, dlq={"x": _dlq("poison", "POISON_MESSAGE")}, allowed_dlq={"max_retries_exceeded": 5}).problems()


def test_dlq_entries_must_agree_with_postgres_and_carry_a_reason() -> None:
    lg = run({"a": Job("delivered", None, T), "b": Job("dead", "HTTP_5XX", T)}, delivered={"a"},
             dlq={"a": _dlq("poison", "POISON_MESSAGE"), "b": {"error_code": "HTTP_5XX"}},
             allowed_dlq={"max_retries_exceeded": 1})
    problems = " | ".join(lg.problems())
    assert "1 DLQ entries name jobs Postgres does not hold parked" in problems
    assert "1 DLQ entries have no reason" in problems


def test_open_jobs_are_lost_and_delivered_claims_need_the_receiver() -> None:
    lg = run({"a": Job("retrying", "HTTP_5XX"), "b": Job("delivered", None, T)})
    assert lg.lost == {"a", "b"}
    assert any("Postgres calls delivered never reached the receiver" in p for p in lg.problems())
