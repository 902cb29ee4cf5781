"""The troubleshooting guide's diagnostics as library calls (``ms07 diagnose`` is a thin
shell over them; runbooks call them directly).

>>> report = run_checks(settings, ["queue"])          # doctest: +SKIP
>>> report.exit_code, report.results[0].finding("lost_messages")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ms07.diagnose.options import DiagnoseOptions, DiagnoseUsageError, parse_duration

if TYPE_CHECKING:
    from ms07.diagnose.model import EXIT_CODES, CheckResult, Finding, Report, Section, worst
    from ms07.diagnose.runner import (
        CHECKS,
        run_check,
        run_check_async,
        run_checks,
        run_checks_async,
    )

# Loaded on first use: ``ms07 --help`` builds the diagnose commands from
# ms07.diagnose.options and must not import the checks (psycopg, httpx, kubernetes).
_LAZY = {
    **dict.fromkeys(("EXIT_CODES", "CheckResult", "Finding", "Report", "Section", "worst"), "model"),
    **dict.fromkeys(
        ("CHECKS", "run_check", "run_check_async", "run_checks", "run_checks_async"), "runner"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ms07.diagnose.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ms07.diagnose' has no attribute {name!r}")

__all__ = [
    "CHECKS",
    "EXIT_CODES",
    "CheckResult",
    "DiagnoseOptions",
    "DiagnoseUsageError",
    "Finding",
    "Report",
    "Section",
    "parse_duration",
    "run_check",
    "run_check_async",
    "run_checks",
    "run_checks_async",
    "worst",
]
