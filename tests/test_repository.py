"""The tree itself: no merge leftovers, every Python file compiles, ``ruff check`` finds
nothing, no citation of a document outside the repository.

A conflict marker left by a merge in a helper the suite only starts as a subprocess
(bench/sink.py once) fails far from its cause; here it fails naming the file and line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import require_tool

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<{7}|>{7}) ", re.MULTILINE)  # "=======" alone is also a Markdown heading rule
# The first design note and the troubleshooting guide lived outside the repository (in a
# shared directory); docs/architecture.md replaces both. Only its "Sources" section may
# name them: a comment citing them again would send the reader somewhere they cannot go.
OUTSIDE = re.compile(rb"DESIGN\.md|DESIGN (?:section|\xc2\xa7)|troubleshooting-guide|\bshared/", re.IGNORECASE)
ARCHITECTURE = "docs/architecture.md"


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout  # noqa: S603, S607
        return [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist)
        return [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts]


def test_no_merge_conflict_markers() -> None:
    found = []
    for path in _tracked():
        if path.suffix in {".png", ".gz", ".whl"} or not path.is_file():
            continue
        data = path.read_bytes()
        for m in MARKER.finditer(data):
            line = data.count(b"\n", 0, m.start()) + 1
            found.append(f"{path.relative_to(ROOT)}:{line}")
    assert not found, f"merge conflict markers: {', '.join(found)}"


def test_every_python_file_compiles() -> None:
    errors = []
    for path in _tracked():
        if path.suffix != ".py" or not path.is_file():
            continue
        try:
            compile(path.read_bytes(), str(path), "exec")
        except SyntaxError as exc:
            errors.append(f"{path.relative_to(ROOT)}:{exc.lineno}: {exc.msg}")
    assert not errors, "; ".join(errors)


def test_ruff_check_finds_nothing() -> None:
    """The whole tree, with the configuration in pyproject.toml (found from the root)."""
    require_tool("ruff")
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, f"ruff check . (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"


def _section(data: bytes, heading: bytes) -> tuple[int, int]:
    """Byte range of a Markdown ``## heading`` section (to the next ``## `` or the end)."""
    start = data.find(b"\n## " + heading + b"\n")
    if start < 0:
        return (0, 0)
    end = data.find(b"\n## ", start + 1)
    return (start, len(data) if end < 0 else end)


def test_no_citation_of_documents_outside_the_repository() -> None:
    found = []
    for path in _tracked():
        rel = path.relative_to(ROOT).as_posix()
        if path.suffix in {".png", ".gz", ".whl"} or not path.is_file() or rel == "tests/test_repository.py":
            continue
        data = path.read_bytes()
        allowed = _section(data, b"Sources") if rel == ARCHITECTURE else (0, 0)
        for m in OUTSIDE.finditer(data):
            if not allowed[0] <= m.start() < allowed[1]:
                line = data.count(b"\n", 0, m.start()) + 1
                found.append(f"{rel}:{line} ({m.group().decode('utf-8', 'replace')})")
    assert not found, f"cite docs/architecture.md or README instead: {', '.join(found)}"


def test_the_architecture_page_acknowledges_its_sources() -> None:
    """The exception above is for this section: it must exist and be the only place."""
    data = (ROOT / ARCHITECTURE).read_bytes()
    start, end = _section(data, b"Sources")
    assert end > start and OUTSIDE.search(data[start:end]), "docs/architecture.md has no Sources section naming them"
