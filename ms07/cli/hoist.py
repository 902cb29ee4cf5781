"""Global options after the subcommand: ``ms07 diagnose all --config F``.

Click reads a group's options only before its subcommand, but people type them where
they think of them. :func:`hoist` moves the root's options (``--config``/``-c``,
``--log-level``, ``--version``) found after the subcommand to just before it, so Click
sees what the user meant. It walks the words the way Click will parse them: the value
of any option is skipped (``submit --data --config`` sends the text ``--config``),
nothing after ``--`` moves, and a command with an option of the same name keeps its own
(``run --config F``).
"""

from __future__ import annotations

from typing import Any


def _options(cmd: Any) -> dict[str, Any]:
    """Option name -> parameter, for every option of a Click command."""
    out: dict[str, Any] = {}
    for p in getattr(cmd, "params", []):
        if getattr(p, "param_type_name", "") == "option":
            for name in [*p.opts, *p.secondary_opts]:
                out[name] = p
    return out


def _takes(param: Any, word: str) -> int:
    """How many of the following words this option consumes."""
    if "=" in word and word.startswith("--"):
        return 0
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return 0
    return max(1, int(getattr(param, "nargs", 1) or 1))


def hoist(root: Any, args: list[str]) -> list[str]:
    """``args`` with the root's options that follow the subcommand moved before it."""
    globals_ = _options(root)
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        p = globals_.get(args[i].split("=", 1)[0])
        i += 1 + (_takes(p, args[i]) if p is not None else 0)
    if i >= len(args) or args[i] == "--":
        return args
    head, rest = args[:i], args[i:]
    cmd: Any = root
    own: dict[str, Any] = {}  # options of the commands on the path: they shadow the root's
    moved: list[str] = []
    kept: list[str] = []
    j = 0
    while j < len(rest):
        word = rest[j]
        if word == "--":
            kept += rest[j:]
            break
        sub = getattr(cmd, "commands", {}).get(word) if not word.startswith("-") else None
        if sub is not None:
            cmd = sub
            own.update(_options(sub))
            kept.append(word)
            j += 1
            continue
        name = word.split("=", 1)[0] if word.startswith("--") else word
        if word.startswith("-") and name in own:
            n = 1 + _takes(own[name], word)
            kept += rest[j:j + n]
        elif word.startswith("-") and name in globals_:
            n = 1 + _takes(globals_[name], word)
            moved += rest[j:j + n]
        else:
            n = 1
            kept.append(word)
        j += n
    return [*head, *moved, *kept]
