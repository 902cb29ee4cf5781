"""The troubleshooting guide's diagnostics as library calls (``ms07 diagnose`` is a thin
shell over them; runbooks call them directly).

>>> report = run_checks(settings, ["queue"])          # doctest: +SKIP
>>> report.exit_code, report.results[0].finding("lost_messages")  # doctest: +SKIP
"""

from __future__ import annotations

from ms07.diagnose.model import EXIT_CODES, CheckResult, Finding, Report, Section, worst
from ms07.diagnose.options import DiagnoseOptions, DiagnoseUsageError, parse_duration
from ms07.diagnose.runner import CHECKS, run_check, run_check_async, run_checks, run_checks_async

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
