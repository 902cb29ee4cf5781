"""Static security checks, skipped where the tool is not installed: ``bandit -r ms07`` must
report nothing (each accepted finding carries a ``# nosec`` with its reason on the line
above), ``pip-audit`` no known vulnerability in the installed dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require_tool

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


def test_bandit_reports_nothing() -> None:
    require_tool("bandit")
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "bandit", "-r", "ms07", "-f", "json", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout)
    # B608 (SQL built from strings) is accepted in the store layer alone, where statements
    # are composed only of constants (the status groups of ms07/store/status.py, column
    # names from closed tables) and every value goes as a query parameter; anywhere else a
    # string-built statement is a finding.
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]
                if not (r["test_id"] == "B608" and Path(r["filename"]).as_posix().startswith("ms07/store/"))]
    assert findings == [], "\n".join(findings)
    assert not report["errors"], report["errors"]


def test_pip_audit_finds_no_known_vulnerability() -> None:
    require_tool("pip_audit")
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.skip(f"pip-audit could not run here: {proc.stderr.strip().splitlines()[-1:]}")
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        pytest.skip("pip-audit reached no vulnerability service (every dependency skipped): run it where "
                    "pypi.org or osv.dev answers")
    vulnerable = [f"{d['name']} {d['version']}: {[v['id'] for v in d['vulns']]}" for d in audited if d["vulns"]]
    assert vulnerable == [], "\n".join(vulnerable)


# Lowest versions past the advisories reachable through the dependency tree (issue 16).
ADVISORY_FLOORS = {
    "aiohttp": "3.13.3",  # request smuggling (lenient parser, chunk extensions), decompression bombs
    "h11": "0.16",  # malformed chunked bodies accepted: request smuggling
    "requests": "2.32.4",  # .netrc credentials sent to the wrong host
    "urllib3": "2.5",  # redirects followed although disabled
    "idna": "3.7",  # quadratic-time idna.encode
}


def test_dependency_floors_are_past_known_advisories() -> None:
    """pyproject.toml refuses every version below each floor (the installed tree too), so no
    resolver can pick a vulnerable one; the offline pip-audit above cannot tell."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    for name, floor in ADVISORY_FLOORS.items():
        assert name in requirements, f"{name} needs a lower bound in [project].dependencies"
        lows = [Version(s.version) for s in requirements[name].specifier if s.operator in (">=", "==", "~=")]
        assert lows and max(lows) >= Version(floor), f"{requirements[name]}: needs {name}>={floor}"
        assert Version(version(name)) >= Version(floor), f"installed {name} {version(name)} < {floor}"
