"""bench/compare.py's verdicts: each target on the median of the per-round ratios, with
their spread, and nothing judged on fewer than 5 rounds (synthetic results, no processes)."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.compare import median_of


def _round(rate: float, cpu: float) -> dict[str, Any]:
    return {"rate": rate, "cpu_per_1000": cpu, "unique": 1000, "duplicates": 0, "n": 1000}


def _results(rounds: int) -> dict[str, Any]:
    # The ceiling is slow in round 0 only; ms07 is at 0.45-0.6 of it in every other round.
    # The ratio of the medians (3000 / 6000 = 0.5) says "met", the per-round ratios say
    # 0.6 (round 0, a slow ceiling), then 0.45 four times: missed.
    ceiling = [5000, 6000, 6000, 6000, 6000][:rounds]
    ms07 = [3000, 2700, 2700, 2700, 3300][:rounds]
    raw = {
        "aiohttp": [_round(c, 0.10) for c in ceiling],
        "ms07": [_round(m, 0.16 if i % 2 else 0.14) for i, m in enumerate(ms07)],
        "ms07-w2": [_round(m * 1.2, 0.17) for m in ms07],
        "arq": [_round(m / 4, 0.5) for m in ms07],
    }
    systems = {k: median_of(v) for k, v in raw.items()}
    systems["ms07"]["latency"] = {"p50_ms": 5.0, "p95_ms": 9.0, "p99_ms": 12.0, "achieved_rate": 1350.0,
                                  "offered_rate": 1350.0, "p99_runs": [12.0, 11.0, 14.0]}
    return {
        "n": 1000, "ref_n": 100, "concurrency": 64, "runs": rounds, "min_rounds": 5, "settings": {},
        "machine": {"cpus": 2, "python": "3.11", "date": "today", "load_before": [1.0], "load_after": [1.0]},
        "systems": systems,
        "common_rates": {
            "500": {"ms07": {"p50_ms": 3.0, "p95_ms": 6.0, "p99_ms": 9.5}, "arq": {"p50_ms": 8.0, "p95_ms": 20.0,
                                                                                   "p99_ms": 31.0}},
            "4000": {"ms07": {"skipped": "peak"}, "arq": {"skipped": "peak"}},
        },
        "rate_runs": 3, "rate_seconds": 5,
    }


def test_targets_are_judged_on_the_median_of_the_per_round_ratios_with_their_spread() -> None:
    r = _results(5)
    verdicts = {what: (ok, text) for what, ok, text in report.targets(r)}
    ok, text = verdicts["ms07 >= 0.5 × ceiling (deliveries/s)"]
    assert ok is False, text
    assert "0.45 × (median of 5 per-round ratios; min–max 0.45–0.60" in text
    ok, text = verdicts["ms07's worker CPU per delivery <= 1.5 × the bare aiohttp client's"]
    assert ok is True and text.startswith("1.40 × (median of 5 per-round ratios; min–max 1.40–1.60"), text
    ok, text = verdicts["ms07 p99 at 500/s offered <= 20 ms and no worse than the best peer's"]
    assert ok is True and "arq 31.0" in text
    assert verdicts["ms07 >= 3 × arq (deliveries/s)"][0] is True


def test_fewer_than_5_rounds_judge_nothing() -> None:
    r = _results(3)
    judged = [(what, ok) for what, ok, text in report.targets(r) if "per-round ratios" in text]
    assert len(judged) == 3  # ceiling, arq, CPU
    assert all(ok is None for _, ok in judged), judged


def test_the_tables_show_spreads_the_common_rates_and_the_workers() -> None:
    text = report.compare_table(_results(5), readme=True)
    assert "| 0.45 (0.45–0.60) |" in text  # ms07's × ceiling: median (min–max) of the rounds
    assert "| 500/s | 3.0 / 6.0 / 9.5 | – | 8.0 / 20.0 / 31.0 |" in text
    assert "| 4,000/s | – | – | – |" in text
    assert "`ms07 run --workers 2` against 1 process, same rounds: 1.20 (1.20–1.20) × the deliveries/s" in text
    md = report.compare_markdown(_results(5))
    assert "## One engine process or two" in md
