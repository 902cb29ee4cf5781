"""Find and load runbooks (validated by :mod:`ms07.runbooks.validate`).

Runbooks are found in the first of these that exists: ``$MS07_RUNBOOKS_DIR``; the
repository's ``runbooks/`` next to the package (an editable install); the copy packaged
in the wheel (``ms07/_runbooks``); ``/usr/share/ms07/runbooks`` (the container image).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from ms07.config import parse_yaml
from ms07.errors import ConfigError, NotFound, RunbookError
from ms07.runbooks.model import Runbook
from ms07.runbooks.validate import Validator

SYSTEM_DIR = Path("/usr/share/ms07/runbooks")


def search_path() -> list[Path]:
    """Where runbooks may be, in order (the first that exists is used)."""
    env = os.environ.get("MS07_RUNBOOKS_DIR")
    if env:
        return [Path(env).expanduser()]
    package = Path(__file__).resolve().parent.parent
    repo = package.parent
    found = []
    if (repo / "pyproject.toml").is_file():  # an editable install or a checkout
        found.append(repo / "runbooks")
    return [*found, package / "_runbooks", SYSTEM_DIR]


def runbooks_dir() -> Path:
    """The directory runbooks are read from; :class:`NotFound` if there is none."""
    paths = search_path()
    for p in paths:
        if p.is_dir():
            return p
    if os.environ.get("MS07_RUNBOOKS_DIR"):
        raise NotFound(f"MS07_RUNBOOKS_DIR={paths[0]} is not a directory")
    raise NotFound(
        "no runbooks directory: looked in "
        + ", ".join(str(p) for p in paths)
        + " (set MS07_RUNBOOKS_DIR)"
    )


def files(directory: Path | None = None) -> list[Path]:
    return sorted((directory or runbooks_dir()).glob("*.yaml"))


def find(name: str) -> Path:
    """A runbook's file by id (``queue-full``) or by path (``./draft.yaml``)."""
    as_path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        if as_path.is_file():
            return as_path
        raise NotFound(f"no runbook file {name}")
    directory = runbooks_dir()
    path = directory / f"{name}.yaml"
    if path.is_file():
        return path
    ids = [p.stem for p in files(directory)]
    close = difflib.get_close_matches(name, ids, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(ids) or 'none'}"
    raise NotFound(f"no runbook {name!r} in {directory}{hint}")


def load(name_or_path: str | Path) -> Runbook:
    """Load and validate one runbook (by id or path)."""
    path = name_or_path if isinstance(name_or_path, Path) else find(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RunbookError(f"{path}: not UTF-8 text") from None
    return parse(text, path)


def load_all(directory: Path | None = None) -> list[Runbook]:
    return [load(p) for p in files(directory)]


def parse(text: str, path: Path) -> Runbook:
    """Validate a runbook's text; ``path`` names it in errors (and its stem is its id)."""
    try:
        doc = parse_yaml(text, str(path))
    except ConfigError as exc:
        # parse_yaml says "FILE: line N invalid YAML: ..." or "FILE: duplicate key 'k' at line N".
        message = str(exc)[len(str(path)) + 2 :] if str(exc).startswith(f"{path}: ") else str(exc)
        m = re.match(r"line (\d+) (.*)", message) or re.match(
            r"(?P<rest>.*) at line (?P<line>\d+)$", message
        )
        if m is None:
            raise RunbookError(f"{path}:1: {message}") from None
        line, rest = (
            (m.group(1), m.group(2)) if message.startswith("line ") else (m["line"], m["rest"])
        )
        raise RunbookError(f"{path}:{line}: {rest}") from None
    return Validator(path).runbook(doc)
