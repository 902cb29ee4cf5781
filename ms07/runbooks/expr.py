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
from dataclasses import dataclass, field

from ms07.runbooks.exprtree import (
    KEYWORDS,
    LEVELS,
    BoolOp,
    Call,
    Compare,
    Const,
    ExprError,
    ListLit,
    Name,
    Node,
    Not,
    Refs,
    check,
)

__all__ = ["LEVELS", "ExprError", "Expression", "Facts", "compile_expression", "tokenize"]

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


# --------------------------------------------------------------------------- parser

# Parentheses, `not`, lists and calls nest; each level costs the recursive parser, the
# checker and the evaluator a few Python frames, so 3,000 levels were a RecursionError.
# Real expressions nest three or four deep.
MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    def deeper(self, column: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"nested more than {MAX_DEPTH} levels deep", column)

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
            self.deeper(t.column)
            node = Not(t.column, operand=self.not_())
            self.depth -= 1
            return node
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
            self.deeper(t.column)
            node = self.or_()
            self.expect(")")
            self.depth -= 1
            return node
        if self.at("["):
            self.take()
            self.deeper(t.column)
            items: list[Node] = []
            while not self.at("]"):
                items.append(self.operand())
                self.separator("]")
            self.expect("]")
            self.depth -= 1
            return ListLit(t.column, items=items)
        raise ExprError(f"expected a value, found {self._shown()}", t.column)

    def call(self, name: Token) -> Node:
        self.expect("(")
        self.deeper(name.column)
        args: list[Node] = []
        while not self.at(")"):
            args.append(self.or_())
            self.separator(")")
        self.expect(")")
        self.depth -= 1
        return Call(name.column, fn=name.text, args=args)


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
    if check(tree, refs) != "bool":
        raise ExprError(
            f"the expression must be true or false, not a {tree.type} "
            "(e.g. `status('queue') >= warning`)",
            1,
        )
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
