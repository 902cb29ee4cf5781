"""The ``when:`` / ``expect:`` language of runbook steps: small, typed, never ``eval``.

An expression is read by a hand-written recursive-descent parser into a tiny tree, type
checked once at load (so a typo fails the runbook's validation, not a 3 a.m. run), and
evaluated against :class:`Facts`, what the steps before have found.

    finding('queue.dead_consumers')            # reported at warning or worse
    finding('auth.failures', info)             # reported at all
    severity('queue.lost_messages') >= warning # the worst severity it was reported at
    status('queue') in ['warning', 'critical'] # a check's status ('none': not run yet)
    severity >= warning                        # the previous step's worst finding
    status == healthy                          # the previous step's verdict as a level
    not dry_run and (a or b)

Levels, lowest first: none < healthy = info < unknown < warning < critical. Comparisons
of levels go by that order; ``==`` and ``in`` too (so ``healthy == info``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


# --------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'[^'\\]*'|"[^"\\]*")
    | (?P<number>\d+(?:\.\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    )""",
    re.VERBOSE,
)


@dataclass
class Token:
    kind: str  # string, number, name, op, end
    text: str
    column: int


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            bad = text[col - 1]
            hint = " (strings need quotes: 'queue.dead_consumers')" if bad in ".-" else ""
            if bad in "'\"":
                raise ExprError("unterminated string", col)
            raise ExprError(f"unexpected character {bad!r}{hint}", col)
        kind = m.lastgroup or "op"
        out.append(Token(kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    out.append(Token("end", "", len(text) + 1))
    return out


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
        assert self.operand is not None
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
        assert self.left is not None and self.right is not None
        a, b = self.left.eval(facts), self.right.eval(facts)
        t = self.left.type
        if self.op in ("in", "not in"):
            found = _key(a, t) in [_key(x, t) for x in b]
            return found if self.op == "in" else not found
        return _COMPARE[self.op](_key(a, t), _key(b, t))


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def at(self, *texts: str) -> bool:
        return self.tok.kind in ("op", "name") and self.tok.text in texts

    def expect(self, text: str) -> Token:
        if not self.at(text):
            raise ExprError(f"expected {text!r}, found {self._shown()}", self.tok.column)
        return self.take()

    def separator(self, closing: str) -> None:
        if self.at(closing):
            return
        if not self.at(","):
            raise ExprError(f"expected ',' or {closing!r}, found {self._shown()}", self.tok.column)
        self.take()

    def _shown(self) -> str:
        return "the end" if self.tok.kind == "end" else repr(self.tok.text)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ExprError("empty expression", 1)
        node = self.or_()
        if self.tok.kind != "end":
            raise ExprError(f"unexpected {self._shown()}", self.tok.column)
        return node

    def or_(self) -> Node:
        first = self.and_()
        items = [first]
        while self.at("or"):
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else BoolOp(first.column, op="or", operands=items)

    def and_(self) -> Node:
        first = self.not_()
        items = [first]
        while self.at("and"):
            self.take()
            items.append(self.not_())
        return items[0] if len(items) == 1 else BoolOp(first.column, op="and", operands=items)

    def not_(self) -> Node:
        if self.at("not"):
            t = self.take()
            return Not(t.column, operand=self.not_())
        return self.compare()

    def compare(self) -> Node:
        left = self.operand()
        op = None
        if self.at("==", "!=", "<", "<=", ">", ">=", "in"):
            op = self.take().text
        elif self.at("not") and self.tokens[self.i + 1].text == "in":
            self.i += 2
            op = "not in"
        if op is None:
            return left
        column = self.tokens[self.i - 1].column
        right = self.operand()
        if self.at("==", "!=", "<", "<=", ">", ">=", "in"):
            raise ExprError("comparisons cannot be chained: use `and`", self.tok.column)
        return Compare(column, op=op, left=left, right=right)

    def operand(self) -> Node:
        t = self.tok
        if t.kind == "string":
            self.take()
            return Const(t.column, value=t.text[1:-1])
        if t.kind == "number":
            self.take()
            return Const(t.column, "num", value=float(t.text))
        if t.kind == "name":
            self.take()
            if t.text in ("true", "false"):
                return Const(t.column, "bool", value=t.text == "true")
            if t.text in KEYWORDS:
                raise ExprError(f"unexpected {t.text!r}", t.column)
            if self.at("("):
                return self.call(t)
            return Name(t.column, name=t.text)
        if self.at("("):
            self.take()
            node = self.or_()
            self.expect(")")
            return node
        if self.at("["):
            self.take()
            items: list[Node] = []
            while not self.at("]"):
                items.append(self.operand())
                self.separator("]")
            self.expect("]")
            return ListLit(t.column, items=items)
        raise ExprError(f"expected a value, found {self._shown()}", t.column)

    def call(self, name: Token) -> Node:
        self.expect("(")
        args: list[Node] = []
        while not self.at(")"):
            args.append(self.or_())
            self.separator(")")
        self.expect(")")
        return Call(name.column, fn=name.text, args=args)


# --------------------------------------------------------------------------- checker


@dataclass
class Refs:
    """What an expression refers to, for the loader's cross-checks."""

    findings: list[tuple[str, int]] = field(default_factory=list)  # (id, column)
    checks: list[tuple[str, int]] = field(default_factory=list)


def _check(node: Node, refs: Refs) -> str:
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
            raise ExprError(f"unknown function {node.fn!r}; known: {', '.join(FUNCTIONS)}", node.column)
        required, optional, result = FUNCTIONS[node.fn]
        if not len(required) <= len(node.args) <= len(required) + len(optional):
            n = f"{len(required)}" + (f" or {len(required) + len(optional)}" if optional else "")
            raise ExprError(f"{node.fn}() takes {n} argument(s), got {len(node.args)}", node.column)
        for arg, kind in zip(node.args, [*required, *optional], strict=False):
            t = _check(arg, refs)
            if kind in ("finding", "check"):
                if not isinstance(arg, Const) or t not in ("str", "level"):
                    raise ExprError(f"{node.fn}() wants a quoted {kind} name", arg.column)
                (refs.findings if kind == "finding" else refs.checks).append((arg.value, arg.column))
            elif t != kind:
                raise ExprError(f"{node.fn}(): expected a level (info, warning, critical), got {t}",
                                arg.column)
        node.type = result
        return result
    if isinstance(node, ListLit):
        types = {_check(i, refs) for i in node.items}
        if len(types) > 1:
            raise ExprError("a list must hold values of one kind", node.column)
        node.type = f"list:{types.pop() if types else 'any'}"
        return node.type
    if isinstance(node, Not):
        assert node.operand is not None
        if _check(node.operand, refs) != "bool":
            raise ExprError("`not` needs a true/false operand", node.operand.column)
        node.type = "bool"
        return "bool"
    if isinstance(node, BoolOp):
        for o in node.operands:
            if _check(o, refs) != "bool":
                raise ExprError(f"`{node.op}` needs true/false operands, got {o.type}", o.column)
        node.type = "bool"
        return "bool"
    assert isinstance(node, Compare) and node.left is not None and node.right is not None
    lt, rt = _check(node.left, refs), _check(node.right, refs)
    # A quoted word that is not a level compared with a level is a typo ('critcal').
    if {lt, rt} == {"level", "str"}:
        bad = node.right if rt == "str" else node.left
        raise ExprError(f"{getattr(bad, 'value', '?')!r} is not a level; levels: {', '.join(LEVELS)}",
                        bad.column)
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


@dataclass
class Expression:
    """A parsed, checked expression; ``evaluate(facts)`` -> bool."""

    text: str
    tree: Node
    refs: Refs

    def evaluate(self, facts: Facts) -> bool:
        return bool(self.tree.eval(facts))


def compile_expression(text: str) -> Expression:
    """Parse and type-check ``text``; :class:`ExprError` says what and where."""
    if not isinstance(text, str):
        raise ExprError(f"expected an expression in quotes, got {type(text).__name__}")
    tree = _Parser(text).parse()
    refs = Refs()
    if _check(tree, refs) != "bool":
        raise ExprError(f"the expression must be true or false, not a {tree.type} "
                        "(e.g. `status('queue') >= warning`)", 1)
    return Expression(text, tree, refs)


# --------------------------------------------------------------------------- facts


@dataclass
class Facts:
    """What the steps so far found: the latest result of each diagnose check (its status
    and ``(finding id, severity)`` pairs) and the verdict of the step just before."""

    checks: dict[str, tuple[str, list[tuple[str, str]]]] = field(default_factory=dict)
    last_status: str = "none"
    last_severity: str = "none"
    dry_run: bool = False

    def record_check(self, check: str, status: str, findings: list[tuple[str, str]]) -> None:
        self.checks[check] = (status, list(findings))

    def finding(self, fid: str, minimum: str = "warning") -> bool:
        return LEVELS[self.severity(fid)] >= max(LEVELS[minimum], LEVELS["info"])

    def severity(self, fid: str) -> str:
        _, findings = self.checks.get(fid.split(".", 1)[0], ("none", []))
        worst = "none"
        for i, sev in findings:
            if i == fid and LEVELS[sev] > LEVELS[worst]:
                worst = sev
        return worst

    def status(self, check: str) -> str:
        return self.checks.get(check, ("none", []))[0]
