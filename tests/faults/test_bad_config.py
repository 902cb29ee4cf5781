"""Random and malformed configuration, property-based: the config loader answers with
Settings or one ConfigError line, never another exception; the runbook loader with a
runbook or an Ms07Error."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ms07.config import (
    BatchConfig,
    DestinationConfig,
    DistributionConfig,
    NetworkConfig,
    ServiceConfig,
    Settings,
    load_settings,
)
from ms07.errors import ConfigError, Ms07Error

# Imported here, not looked up at run time: a rename fails this module, never skips it.
from ms07.runbooks import parse as parse_runbook

pytestmark = pytest.mark.faults

urls = st.sampled_from([
    "http://127.0.0.1:8080/in", "https://ms09.example/api", "http://[::1", "http://[", "http://[::1]:99999/x",
    "http://host:-1/", "http://host:port/", "ftp://x/", "http://user:pw@x/", "http://", "//x", "http://x/\n",
    "http://\u00e9x.example/", "http://x" + "/a" * 200,
]) | st.text(max_size=30)
scalars = (st.none() | st.booleans() | st.integers(min_value=-10**20, max_value=10**20)
           | st.floats() | st.text(max_size=20) | urls)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=6)


def section(cls: Any) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping of the section's own keys (and an odd unknown one) to random values."""
    names = [f.name for f in dataclasses.fields(cls)]
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=8), values, max_size=5)


def destination_maps() -> st.SearchStrategy[dict[str, Any]]:
    base = st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "a b", ""]) | st.text(max_size=8),
                                  "url": urls})
    return st.tuples(base, section(DestinationConfig),
                     st.fixed_dictionaries({}, optional={"auth": st.fixed_dictionaries(
                         {"type": st.sampled_from(["none", "bearer", "api_key", "basic",
                                                   "oauth2_client_credentials", "magic"])},
                         optional={"token_env": st.text(max_size=8), "token_url": urls,
                                   "client_id": st.text(max_size=8), "client_secret_env": st.text(max_size=8)}),
                         "batch": section(BatchConfig) | values, "health_url": urls})
                     ).map(lambda t: {**t[1], **t[0], **t[2]})


documents = st.fixed_dictionaries({}, optional={
    "service": section(ServiceConfig) | values,
    "distribution": section(DistributionConfig) | values,
    "network": section(NetworkConfig) | values,
    "destinations": st.lists(destination_maps(), max_size=3) | values,
    "log_level": st.sampled_from(["DEBUG", "info", "loud"]) | values,
}) | st.dictionaries(st.text(max_size=10), values, max_size=4)

texts = st.one_of(
    documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=200),
    st.integers(min_value=1, max_value=1_200).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=1_200).map(lambda n: "a: " * n + "1"),
    st.sampled_from(["a: &x [*x]", "!!python/object:os.system {}", "a: !!binary zz", "? [a, b]\n: 1",
                     "destinations: {a: 1}", "\t- x", "---\n---\n", "key: [unclosed", "a: 1\na: 2"]),
)
environs = st.dictionaries(
    st.sampled_from(["MS07_SERVICE__CONCURRENCY", "MS07_DISTRIBUTION__TIMEOUT_SECONDS", "MS07_HTTP_PORT",
                     "MS07_DISTRIBUTION__PRIORITIES", "MS07_NETWORK__DENY_PRIVATE", "MS07_LOG_LEVEL",
                     "MS07_DESTINATIONS__X", "MS07_NOPE__X", "MS07_SERVICE__NOPE"]),
    st.text(max_size=12) | st.sampled_from(["nan", ".inf", "-1", "1e999", "[1]", "{a: 1}"]),
    max_size=3,
)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if dataclasses.is_dataclass(value):
        return all(_finite(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=texts, environ=environs)
def test_config_loader_gives_settings_or_one_config_error_line(text: str, environ: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ms07.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            result = load_settings(path, environ=environ)
        except ConfigError as exc:
            message = str(exc)
            assert message and "\n" not in message and len(message) < 600, message
            assert "Traceback" not in message
            return
    assert isinstance(result, Settings)
    assert _finite(result), "a NaN or infinite number passed validation"


# ---------------------------------------------------------------------- runbooks

runbook_documents = st.fixed_dictionaries({}, optional={
    "name": values, "title": values, "description": values, "symptoms": values,
    "diagnose": st.lists(st.fixed_dictionaries({}, optional={"run": values, "name": values, "expect": values}),
                         max_size=3) | values,
    "remediation": st.lists(st.fixed_dictionaries({}, optional={"run": values, "name": values,
                                                               "confirm": values}), max_size=3) | values,
    "verification": values, "steps": values,
}) | st.dictionaries(st.text(max_size=10), values, max_size=4)
# Most texts carry the `id: runbook` line that makes the loader treat them as a runbook
# (without it, every text is refused at once and nothing behind that check is exercised).
runbook_texts = st.one_of(runbook_documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                          runbook_documents.map(lambda d: "id: runbook\n" + yaml.safe_dump(d, allow_unicode=True)),
                          st.text(max_size=200).map(lambda t: "id: runbook\n" + t),
                          st.text(max_size=200), st.sampled_from(["a: &x [*x]", "[" * 5000, "!!python/name:os.system"]))


def test_runbook_loader_gives_a_runbook_or_an_ms07_error(tmp_path: Path) -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=runbook_texts)
    def load(text: str) -> None:
        path = tmp_path / "runbook.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            parse_runbook(text, path)
        except Ms07Error as exc:
            assert str(exc) and "\n" not in str(exc), str(exc)

    load()
