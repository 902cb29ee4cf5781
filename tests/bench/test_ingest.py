"""bench/ingest.py at a tiny size, so that the script cannot rot: every mode runs, every
distribution is accepted through the API and delivered once, and the report holds a
ratio per round against that round's ceiling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(200)
def test_a_tiny_ingest_run_reports_every_mode_against_its_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.ingest", "--rounds", "1", "-n", "120", "-c", "8", "--inflight", "4",
         "--batch", "25", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=190, check=False)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["modes"]) == {"ceiling", "single", "batch", "prefilled"}
    ceiling = results["modes"]["ceiling"]["rate_median"]
    for mode, res in results["modes"].items():
        (one,) = res["rounds"]
        assert one["unique"] == 120 and one["duplicates"] == 0, mode
        assert one["rate"] > 0 and one["ratio"] == pytest.approx(one["rate"] / ceiling)
    assert results["modes"]["ceiling"]["ratio_median"] == 1.0
    for mode in ("single", "batch"):
        assert results["modes"][mode]["rounds"][0]["cpu_per_1000"] > 0
    # The table names each mode with its per-round ratio, median and spread.
    assert "| API, 25 distributions per request | " in proc.stdout
    assert "median × ceiling (min-max)" in proc.stdout


def test_bad_sizes_are_refused_in_one_line() -> None:
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.ingest", "--batch", "101"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--batch must be at most 100" in proc.stderr
    assert "Traceback" not in proc.stderr
