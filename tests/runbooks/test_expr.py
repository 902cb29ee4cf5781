"""The when:/expect: language: parsing, type checks at load, evaluation on findings."""

from __future__ import annotations

import pytest

from ms07.runbooks.expr import ExprError, Facts, compile_expression


def facts(**checks: tuple[str, list[tuple[str, str]]]) -> Facts:
    f = Facts()
    for name, (status, findings) in checks.items():
        f.record_check(name, status, findings)
    return f


QUEUE = facts(
    queue=(
        "critical",
        [
            ("queue.dead_consumers", "critical"),
            ("queue.depth", "info"),
            ("queue.lost_messages", "info"),
        ],
    )
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("finding('queue.dead_consumers')", True),
        ("finding('queue.lost_messages')", False),  # reported, but only as info
        ("finding('queue.lost_messages', info)", True),
        ("finding('queue.lost_messages', 'info')", True),
        ("finding('queue.dead_consumers', critical)", True),
        ("finding('timeouts.stuck_jobs')", False),  # that check did not run
        ("severity('queue.dead_consumers') >= warning", True),
        ("severity('queue.lost_messages') == info", True),
        ("severity('queue.dlq') == none", True),
        ("status('queue') in ['warning', 'critical']", True),
        ("status('queue') not in [warning, critical]", False),
        ("status('timeouts') == none", True),
        ("healthy == info", True),
        ("unknown < warning and warning < critical and none < healthy", True),
        ("not finding('queue.dead_consumers') or finding('queue.depth', info)", True),
        ("not (finding('queue.dead_consumers') and finding('queue.lost_messages'))", True),
        ("true and not false", True),
        ("not dry_run", True),
        ("1 < 2", True),
    ],
)
def test_evaluates(text: str, expected: bool) -> None:
    assert compile_expression(text).evaluate(QUEUE) is expected


def test_bare_status_and_severity_are_the_previous_steps() -> None:
    f = Facts(last_status="warning", last_severity="critical")
    assert compile_expression("severity >= warning").evaluate(f)
    assert compile_expression("status == warning and status < critical").evaluate(f)
    assert not compile_expression("status == healthy").evaluate(f)


def test_references_are_collected_for_the_loader() -> None:
    e = compile_expression("finding('queue.dlq') or status('memory') > healthy")
    assert e.refs.findings == [("queue.dlq", 9)]
    assert e.refs.checks == [("memory", 32)]


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "empty expression", 1),
        ("finding(queue.dead_consumers)", "unexpected character '.'", 14),
        ("finding('queue.x'", "expected ',' or ')', found the end", 18),
        ("finding('a') and", "expected a value, found the end", 17),
        ("__import__('os')", "unknown function '__import__'", 1),
        ("open('x')", "unknown function 'open'", 1),
        ("x.y", "unexpected character '.'", 2),
        ("severity", "must be true or false, not a level", 1),
        ("status('queue') == 'critcal'", "'critcal' is not a level", 20),
        ("status('queue') >= 3", "cannot compare a level with a num", 17),
        ("finding('a') and status", "`and` needs true/false operands, got level", 18),
        ("not status", "`not` needs a true/false operand", 5),
        ("status in warning", "`in` needs a list on its right", 11),
        ("finding('a', 'b', 'c')", "finding() takes 1 or 2 argument(s), got 3", 1),
        ("finding(1)", "finding() wants a quoted finding name", 9),
        ("finding('a', 2)", "expected a level", 14),
        ("1 < 2 < 3", "comparisons cannot be chained", 7),
        ("'a' < 'b'", "`<` compares levels or numbers, not str", 5),
        ("status('queue') in ['warning', 1]", "a list must hold values of one kind", 20),
        ("status == 'ok", "unterminated string", 11),
        ("foo", "unknown name 'foo'", 1),
        ("finding('a') ; finding('b')", "unexpected character ';'", 14),
    ],
)
def test_bad_expressions_say_what_and_where(text: str, message: str, column: int) -> None:
    with pytest.raises(ExprError) as info:
        compile_expression(text)
    assert message in info.value.message
    assert info.value.column == column


def test_never_evaluates_python() -> None:
    # Python syntax that would do something under eval() is refused at parse time.
    for text in ("[x for x in ()]", "lambda: 1", "a if b else c", "finding('a')()", "2 ** 8 > 1"):
        with pytest.raises(ExprError):
            compile_expression(text)


DEEP = 3000


@pytest.mark.parametrize("text", [
    "(" * DEEP + "true" + ")" * DEEP,
    "not " * DEEP + "true",
    "status in " + "[" * DEEP + "]" * DEEP,
    "finding(" * DEEP + "'a'" + ")" * DEEP,
    "(not " * DEEP + "true" + ")" * DEEP,
    "(" * DEEP,  # unterminated as well
])
def test_deep_nesting_is_an_expression_error_not_a_recursion_error(text: str) -> None:
    """Each nesting construct (parentheses, not, lists, calls): a clear ExprError with the
    column where the limit was passed, never Python's RecursionError."""
    with pytest.raises(ExprError) as info:
        compile_expression(text)
    assert "nested more than" in info.value.message and info.value.column is not None


def test_reasonable_nesting_still_compiles() -> None:
    assert compile_expression("(" * 30 + "not " * 30 + "true" + ")" * 30).evaluate(Facts()) is True
