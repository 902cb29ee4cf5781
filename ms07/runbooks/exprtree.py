"""The tree of a ``when:`` / ``expect:`` expression: its nodes, how each evaluates, and the
type checker that runs at load (so a runbook with a typo never loads).

The parser and the public entry point are in :mod:`ms07.runbooks.expr`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ms07.runbooks.expr import Facts

LEVELS = {"none": 0, "healthy": 1, "info": 1, "unknown": 2, "warning": 3, "critical": 4}
FUNCTIONS = {
    # name: (argument types, optional argument types, result type)
    "finding": (("finding",), ("level",), "bool"),
    "severity": (("finding",), (), "level"),
    "status": (("check",), (), "level"),
}
NAMES = {"severity": "level", "status": "level", "dry_run": "bool"}
KEYWORDS = {"and", "or", "not", "in", "true", "false"}


class ExprError(Exception):
    """A bad expression; ``column`` is 1-based within the expression text."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return self.message + (f" (column {self.column})" if self.column else "")


# --------------------------------------------------------------------------- tree


@dataclass
class Node:
    column: int
    type: str = ""  # filled by the checker: bool, level, str, num, list:<type>

    def eval(self, facts: Facts) -> Any:  # pragma: no cover - every node overrides it
        raise NotImplementedError


@dataclass
class Const(Node):
    value: Any = None

    def eval(self, facts: Facts) -> Any:
        return self.value


@dataclass
class Name(Node):
    name: str = ""

    def eval(self, facts: Facts) -> Any:
        if self.name in LEVELS:
            return self.name
        if self.name == "dry_run":
            return facts.dry_run
        return facts.last_status if self.name == "status" else facts.last_severity


@dataclass
class Call(Node):
    fn: str = ""
    args: list[Node] = field(default_factory=list)

    def eval(self, facts: Facts) -> Any:
        values = [a.eval(facts) for a in self.args]
        if self.fn == "finding":
            return facts.finding(values[0], values[1] if len(values) > 1 else "warning")
        if self.fn == "severity":
            return facts.severity(values[0])
        return facts.status(values[0])


@dataclass
class ListLit(Node):
    items: list[Node] = field(default_factory=list)

    def eval(self, facts: Facts) -> Any:
        return [i.eval(facts) for i in self.items]


@dataclass
class Not(Node):
    operand: Node | None = None

    def eval(self, facts: Facts) -> Any:
        # Type narrowing for mypy: the parser never builds this node without its operands.
        assert self.operand is not None  # nosec B101
        return not self.operand.eval(facts)


@dataclass
class BoolOp(Node):
    op: str = "and"
    operands: list[Node] = field(default_factory=list)

    def eval(self, facts: Facts) -> Any:
        if self.op == "and":
            return all(o.eval(facts) for o in self.operands)
        return any(o.eval(facts) for o in self.operands)


def _key(value: Any, type_: str) -> Any:
    return LEVELS[value] if type_ == "level" else value


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass
class Compare(Node):
    op: str = "=="
    left: Node | None = None
    right: Node | None = None

    def eval(self, facts: Facts) -> Any:
        # Type narrowing for mypy: the parser never builds this node without its operands.
        assert self.left is not None and self.right is not None  # nosec B101
        a, b = self.left.eval(facts), self.right.eval(facts)
        t = self.left.type
        if self.op in ("in", "not in"):
            found = _key(a, t) in [_key(x, t) for x in b]
            return found if self.op == "in" else not found
        return _COMPARE[self.op](_key(a, t), _key(b, t))


# --------------------------------------------------------------------------- checker


@dataclass
class Refs:
    """What an expression refers to, for the loader's cross-checks."""

    findings: list[tuple[str, int]] = field(default_factory=list)  # (id, column)
    checks: list[tuple[str, int]] = field(default_factory=list)


def check(node: Node, refs: Refs) -> str:
    if isinstance(node, Const):
        if not node.type:
            node.type = "level" if node.value in LEVELS else "str"
        return node.type
    if isinstance(node, Name):
        if node.name in LEVELS:
            node.type = "level"
            return "level"
        if node.name not in NAMES:
            known = ", ".join([*NAMES, *LEVELS, "true", "false"])
            hint = " (strings need quotes)" if "." in node.name else ""
            raise ExprError(f"unknown name {node.name!r}{hint}; known: {known}", node.column)
        node.type = NAMES[node.name]
        return node.type
    if isinstance(node, Call):
        if node.fn not in FUNCTIONS:
            raise ExprError(
                f"unknown function {node.fn!r}; known: {', '.join(FUNCTIONS)}", node.column
            )
        required, optional, result = FUNCTIONS[node.fn]
        if not len(required) <= len(node.args) <= len(required) + len(optional):
            n = f"{len(required)}" + (f" or {len(required) + len(optional)}" if optional else "")
            raise ExprError(f"{node.fn}() takes {n} argument(s), got {len(node.args)}", node.column)
        for arg, kind in zip(node.args, [*required, *optional], strict=False):
            t = check(arg, refs)
            if kind in ("finding", "check"):
                if not isinstance(arg, Const) or t not in ("str", "level"):
                    raise ExprError(f"{node.fn}() wants a quoted {kind} name", arg.column)
                (refs.findings if kind == "finding" else refs.checks).append(
                    (arg.value, arg.column)
                )
            elif t != kind:
                raise ExprError(
                    f"{node.fn}(): expected a level (info, warning, critical), got {t}", arg.column
                )
        node.type = result
        return result
    if isinstance(node, ListLit):
        types = {check(i, refs) for i in node.items}
        if len(types) > 1:
            raise ExprError("a list must hold values of one kind", node.column)
        node.type = f"list:{types.pop() if types else 'any'}"
        return node.type
    if isinstance(node, Not):
        # Type narrowing for mypy: the parser never builds this node without its operands.
        assert node.operand is not None  # nosec B101
        if check(node.operand, refs) != "bool":
            raise ExprError("`not` needs a true/false operand", node.operand.column)
        node.type = "bool"
        return "bool"
    if isinstance(node, BoolOp):
        for o in node.operands:
            if check(o, refs) != "bool":
                raise ExprError(f"`{node.op}` needs true/false operands, got {o.type}", o.column)
        node.type = "bool"
        return "bool"
    # Type narrowing for mypy: the parser never builds this node without its operands.
    assert isinstance(node, Compare) and node.left is not None and node.right is not None  # nosec B101
    lt, rt = check(node.left, refs), check(node.right, refs)
    # A quoted word that is not a level compared with a level is a typo ('critcal').
    if {lt, rt} == {"level", "str"}:
        bad = node.right if rt == "str" else node.left
        raise ExprError(
            f"{getattr(bad, 'value', '?')!r} is not a level; levels: {', '.join(LEVELS)}",
            bad.column,
        )
    if node.op in ("in", "not in"):
        if not rt.startswith("list:"):
            raise ExprError(f"`{node.op}` needs a list on its right: [a, b]", node.right.column)
        inner = rt[5:]
        if inner not in (lt, "any"):
            raise ExprError(f"cannot look for a {lt} in a list of {inner}", node.column)
    elif lt != rt:
        raise ExprError(f"cannot compare a {lt} with a {rt}", node.column)
    elif node.op not in ("==", "!=") and lt not in ("level", "num"):
        raise ExprError(f"`{node.op}` compares levels or numbers, not {lt}", node.column)
    node.type = "bool"
    return "bool"
