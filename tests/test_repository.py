"""The tree itself: no merge leftovers, every Python file compiles.

A conflict marker left by a merge in a helper the suite only starts as a subprocess
(bench/sink.py once) fails far from its cause; here it fails naming the file and line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<{7}|>{7}) ", re.MULTILINE)  # "=======" alone is also a Markdown heading rule


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
