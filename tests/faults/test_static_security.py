"""Static security checks, skipped where the tool is not installed: ``bandit -r ms07`` must
report nothing (each accepted finding carries a ``# nosec`` with its reason on the line
above), ``pip-audit`` no known vulnerability in the installed dependencies."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install bandit pip-audit)")


def test_bandit_reports_nothing() -> None:
    _tool("bandit")
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "bandit", "-r", "ms07", "-f", "json", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert findings == [], "\n".join(findings)
    assert not report["errors"], report["errors"]


def test_pip_audit_finds_no_known_vulnerability() -> None:
    _tool("pip_audit")
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
