"""Find and load runbooks (validated by :mod:`ms07.runbooks.validate`).

Runbooks are found in the first of these that exists: ``$MS07_RUNBOOKS_DIR``; the
repository's ``runbooks/`` next to the package (an editable install); the copy packaged
in the wheel (``ms07/_runbooks``); ``/usr/share/ms07/runbooks`` (the container image).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from pathlib import Path

from ms07.config import parse_yaml
from ms07.errors import ConfigError, NotFound, RunbookError
from ms07.runbooks.model import Runbook
from ms07.runbooks.validate import Validator

SYSTEM_DIR = Path("/usr/share/ms07/runbooks")
SUFFIXES = (".yaml", ".yml")
# The largest runbook is ~6 KB; a bigger file is not one (and is not read whole).
MAX_BYTES = 256 * 1024


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
    if name.endswith(SUFFIXES) or os.sep in name:
        if not name.endswith(SUFFIXES):
            # Checked before anything is opened: `runbook show ~/.kube/config` reads nothing.
            raise RunbookError(f"{name}: not a runbook file (a runbook is a .yaml file)")
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


def _read(path: Path) -> str:
    """A runbook file's text. Only a regular ``.yaml`` file (a link must point at one) of at
    most MAX_BYTES is read: not a FIFO or device that would block, not another file through a
    link."""
    try:
        real = path.resolve(strict=True)
        info = os.stat(real)
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read: {exc.strerror}") from None
    if not (path.name.endswith(SUFFIXES) and real.name.endswith(SUFFIXES)):
        raise RunbookError(f"{path}: not a runbook file (a runbook is a .yaml file)")
    if not stat.S_ISREG(info.st_mode):
        raise RunbookError(f"{path}: not a runbook file (not a regular file)")
    if info.st_size > MAX_BYTES:
        raise RunbookError(f"{path}: not a runbook file ({info.st_size} bytes; a runbook has at most {MAX_BYTES})")
    try:
        with open(real, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise RunbookError(f"{path}: not a runbook file (more than {MAX_BYTES} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunbookError(f"{path}: not UTF-8 text") from None


def load(name_or_path: str | Path) -> Runbook:
    """Load and validate one runbook (by id or path)."""
    path = name_or_path if isinstance(name_or_path, Path) else find(name_or_path)
    return parse(_read(path), path)


def load_all(directory: Path | None = None) -> list[Runbook]:
    return [load(p) for p in files(directory)]


def _id_line(stem: str) -> re.Pattern[str]:
    quoted = re.escape(stem)
    return re.compile(rf"^id:[ \t]*(?:{quoted}|'{quoted}'|\"{quoted}\")[ \t]*(?:#.*)?$", re.M)


def parse(text: str, path: Path) -> Runbook:
    """Validate a runbook's text; ``path`` names it in errors (and its stem is its id).

    Errors quote the file (keys, values, YAML tokens) to help its author, so the text must
    first show that it is a runbook: a top-level ``id: <file name>`` line. Any other file
    (``runbook show secrets.yaml``) gets one line that quotes nothing of it."""
    if not _id_line(path.stem).search(text):
        raise RunbookError(
            f"{path}:1: not a runbook: no top-level line `id: {path.stem}` (a runbook's id is its "
            "file's name); nothing of the file is shown"
        )
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
