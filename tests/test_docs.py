"""The reference in docs/ is checked against the code it describes, so it cannot drift:
the CLI reference is regenerated and compared, and every environment variable, HTTP
route and metric the code defines must be named in its page."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_cli_reference_is_current() -> None:
    from ms07.cli.docs import REGENERATE, render

    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == render(), f"docs/cli.md is stale: run `{REGENERATE}` and commit it"


def test_cli_reference_ignores_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same file at any width, with or without colour: the test above must not fail
    because of the terminal it runs in."""
    from ms07.cli.docs import render

    first = render()
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render() == first
    assert "\x1b[" not in first and "&#x27;" not in first


def test_cli_docs_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ms07.cli.docs import REGENERATE, main

    target = tmp_path / "cli.md"
    assert main([str(target)]) == 0
    assert main(["--check", str(target)]) == 0
    target.write_text(target.read_text(encoding="utf-8") + "drift\n", encoding="utf-8")
    assert main(["--check", str(target)]) == 1
    assert REGENERATE in capsys.readouterr().err


# ---------------------------------------------------------------- configuration.md

def _sections(text: str) -> dict[str, str]:
    """Markdown ``### `name` `` (or ``### Name``) sections of a page, by their title."""
    out: dict[str, str] = {}
    for block in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        title, _, body = block.partition("\n")
        out[title.strip().strip("`")] = body.split("\n## ", 1)[0]
    return out


def _rows(section: str) -> dict[str, list[str]]:
    """Table rows whose first cell is one key in backticks: key -> the other cells."""
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def _config_tables() -> list[tuple[str, type, bool]]:
    """(section title in the page, dataclass, top level?) for every settings table."""
    from ms07 import config

    tables: list[tuple[str, type, bool]] = [("Top-level keys", config.Settings, True)]
    for f in dataclasses.fields(config.Settings):
        cls = _dataclass_of(f.type)
        if cls is not None and f.name != "destinations":
            tables.append((f.name, cls, False))
    tables.append(("destinations", config.DestinationConfig, False))
    for f in dataclasses.fields(config.DestinationConfig):
        cls = _dataclass_of(f.type)
        if cls is not None:
            tables.append((f"destinations[].{f.name}", cls, False))
    return tables


def _dataclass_of(tp: Any) -> type | None:
    from ms07 import config

    name = tp if isinstance(tp, str) else getattr(tp, "__name__", "")
    for part in re.findall(r"[A-Za-z_]+", str(name)):
        cls = getattr(config, part, None)
        if dataclasses.is_dataclass(cls) and part != "Settings":
            return cls  # type: ignore[return-value]
    return None


def test_every_setting_is_documented_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    sections = _sections(text)
    problems = []
    for title, cls, top in _config_tables():
        if title not in sections:
            problems.append(f"no section '### `{title}`'")
            continue
        rows = _rows(sections[title])
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in fields.items():
            if top and _dataclass_of(f.type) is not None or (top and name == "destinations"):
                continue  # a section of its own
            if name not in rows:
                problems.append(f"{title}: `{name}` is not documented")
                continue
            if _dataclass_of(f.type) is not None:
                continue  # a nested mapping: its own table holds the defaults
            cell = rows[name][1]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if cell != "(required)":
                    problems.append(f"{title}: `{name}` is required, the page says {cell}")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            shown = yaml.safe_load(cell.strip("`")) if cell.startswith("`") else cell
            if shown != default:
                problems.append(f"{title}: `{name}` defaults to {default!r}, the page says {cell}")
        for name in rows:
            if name not in fields:
                problems.append(f"{title}: `{name}` is documented but is no setting")
    assert not problems, "docs/configuration.md: " + "; ".join(problems)


def _variables_read() -> set[str]:
    """Every MS07_* name in the code, the test fixtures and the benchmarks."""
    names: set[str] = set()
    files = [*ROOT.joinpath("ms07").rglob("*.py"), ROOT / "tests" / "conftest.py", *ROOT.joinpath("bench").glob("*.py")]
    for path in files:
        names.update(re.findall(r"\bMS07_[A-Z][A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_<])", path.read_text(encoding="utf-8")))
    return names


def test_every_environment_variable_is_documented() -> None:
    from ms07.config import Settings

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    sections = {f.name: f.type for f in dataclasses.fields(Settings)}
    missing = []
    for name in sorted(_variables_read()):
        if "__" in name:  # MS07_<SECTION>__<KEY>: documented as the pattern, checked here
            section, _, key = name[len("MS07_"):].lower().partition("__")
            cls = _dataclass_of(sections.get(section, ""))
            if cls is None or key not in {f.name for f in dataclasses.fields(cls)}:
                missing.append(f"{name} (no such setting)")
            continue
        if f"`{name}`" not in text:
            missing.append(name)
    assert "`MS07_<SECTION>__<KEY>`" in text
    assert not missing, f"docs/configuration.md does not list: {', '.join(missing)}"


# ---------------------------------------------------------------- http-api.md

def test_every_http_route_is_documented_with_its_token_rule() -> None:
    from ms07.config import Settings
    from ms07.engine.engine import Engine
    from ms07.engine.server import OPEN_PATHS, build_app

    app = build_app(Engine(Settings()))  # builds the router only: nothing connects or listens
    routes = {f"{r.method} {r.resource.canonical}" for r in app.router.routes() if r.method != "HEAD"}
    assert routes, "no route found: has build_app changed?"
    text = (DOCS / "http-api.md").read_text(encoding="utf-8")
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z]+ /[^`]*)` \| (\w+) \|", text, re.MULTILINE)}
    problems = [f"{r} is not in the route table" for r in sorted(routes - set(table))]
    problems += [f"{r} is documented but not served" for r in sorted(set(table) - routes)]
    for route, token in table.items():
        path = route.split(" ", 1)[1]
        # The console's pages take a session cookie from their login form, not the bearer token.
        expected = "no" if path in OPEN_PATHS else "session" if path.startswith("/console") else "yes"
        if route in routes and token != expected:
            problems.append(f"{route}: token says {token!r}, the server's rule is {expected!r}")
        if route in routes and f"## `{route}`" not in text:
            problems.append(f"{route} has no section '## `{route}`'")
    assert not problems, "docs/http-api.md: " + "; ".join(problems)


# ---------------------------------------------------------------- metrics.md

def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from ms07.metrics import Metrics

    metrics = [m for m in vars(Metrics()).values() if isinstance(m, MetricWrapperBase)]
    assert len(metrics) > 10, "no metric found: has ms07.metrics.Metrics changed?"
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `(zenia_[a-z_]+)` \| (\w+) \|([^|]*)\|", text, re.MULTILINE)}
    problems = []
    for metric in metrics:
        name = metric._name + ("_total" if metric._type == "counter" else "")
        if name not in rows:
            problems.append(f"{name} is not in a table")
            continue
        kind, labels = rows.pop(name)
        if kind != metric._type:
            problems.append(f"{name} is a {metric._type}, the page says {kind}")
        if sorted(re.findall(r"`(\w+)`", labels)) != sorted(metric._labelnames):
            problems.append(f"{name} has labels {list(metric._labelnames)}, the page says {labels.strip() or 'none'}")
    problems += [f"{name} is documented but not defined" for name in rows]
    assert not problems, "docs/metrics.md: " + "; ".join(problems)


def test_every_local_link_in_the_docs_resolves() -> None:
    """README is the front door and docs/ holds the reference: a page moved or renamed
    must not leave a link behind pointing nowhere."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in link.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to nothing: " + ", ".join(broken)
