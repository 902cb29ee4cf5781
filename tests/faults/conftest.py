from __future__ import annotations

from typing import Any

from tests.faults.harness import REPORT
from tests.faults.ledger import table


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("fault ledgers")
        terminalreporter.write_line(table(REPORT))
