"""The ``retention:`` section: defaults, keep-forever spellings, one clear line for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ms07.config import load_settings
from ms07.errors import ConfigError


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_settings(path, environ=environ or {})


def test_defaults_keep_the_disk_bounded(tmp_path: Path) -> None:
    ret = _load(tmp_path, "{}\n").retention
    assert (ret.delivered_days, ret.dead_days, ret.attempts_days, ret.payload_days) == (7.0, 30.0, None, None)
    assert not ret.off


@pytest.mark.parametrize("value", ["0", "null"])
def test_zero_and_null_keep_forever(tmp_path: Path, value: str) -> None:
    keys = ("delivered_days", "dead_days", "attempts_days", "payload_days")
    text = "retention: {" + ", ".join(f"{k}: {value}" for k in keys) + "}\n"
    ret = _load(tmp_path, text).retention
    assert ret.off


def test_fractional_days_and_environment(tmp_path: Path) -> None:
    ret = _load(tmp_path, "retention: {delivered_days: 0.5}\n", {"MS07_RETENTION__DEAD_DAYS": "2"}).retention
    assert ret.delivered_days == 0.5 and ret.dead_days == 2.0


@pytest.mark.parametrize(("text", "message"), [
    ("retention: {delivered_days: -1}\n", "retention.delivered_days: must be 0 or more days"),
    ("retention: {dead_days: -0.5}\n", "retention.dead_days: must be 0 or more days"),
    ("retention: {payload_days: soon}\n", "retention.payload_days: expected a number"),
    ("retention: {batch_size: 0}\n", "retention.batch_size: must be between 1 and 100000"),
    ("retention: {interval_seconds: 0}\n", "retention.interval_seconds: must be positive"),
    ("retention: {keep: 3}\n", "retention.keep: unknown key"),
])
def test_bad_values_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert "line 1" in str(err.value)
