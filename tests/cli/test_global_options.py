"""Global options (``--config``, ``--log-level``, ``--version``) before or after the subcommand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ms07 import __version__
from ms07.cli import app
from ms07.cli.hoist import hoist
from tests.support import cli


def _root():  # type: ignore[no-untyped-def]
    import typer

    return typer.main.get_command(app)


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("destinations: []\nbogus: 1\n")
    return path


@pytest.mark.parametrize("args, code", [
    (["--config", "{f}", "queue", "stats"], 2),
    (["queue", "stats", "--config", "{f}"], 2),
    (["queue", "stats", "-c", "{f}"], 2),
    (["queue", "stats", "--config={f}"], 2),
    (["queue", "--config", "{f}", "stats"], 2),
    (["dlq", "replay", "--all", "--config", "{f}", "--yes"], 2),
    (["diagnose", "all", "--config", "{f}"], 3),  # diagnose: 3 UNKNOWN, could not check
])
def test_config_read_before_or_after_the_subcommand(bad_config: Path, args: list[str], code: int) -> None:
    result = cli([a.format(f=bad_config) for a in args], {"NO_COLOR": "1"})
    assert result.exit_code == code, result.output
    assert result.output.strip().endswith(f"{bad_config}: bogus: unknown key (line 2)")
    assert len(result.output.strip().splitlines()) == 1


def test_env_vars_still_work(bad_config: Path) -> None:
    result = cli(["queue", "stats"], {"NO_COLOR": "1", "MS07_CONFIG": str(bad_config)})
    assert result.exit_code == 2 and "bogus: unknown key" in result.output
    result = cli(["queue", "stats"], {"NO_COLOR": "1", "MS07_LOG_LEVEL": "NOPE"})
    assert result.exit_code == 2 and "'NOPE' is not a log level" in result.output


def test_log_level_and_version_after_the_subcommand() -> None:
    result = cli(["queue", "stats", "--log-level", "NOPE"], {"NO_COLOR": "1"})
    assert result.exit_code == 2 and "'NOPE' is not a log level" in result.output
    result = cli(["diagnose", "all", "--version"], {"NO_COLOR": "1"})
    assert result.exit_code == 0 and result.output.strip() == f"ms07 {__version__}"


def test_values_and_double_dash_are_left_alone() -> None:
    root = _root()
    # The value of another option, even one that looks like a global option, stays put.
    assert hoist(root, ["submit", "-d", "a", "--data", "--config"]) == ["submit", "-d", "a", "--data", "--config"]
    # Nothing after -- moves: those are arguments.
    assert hoist(root, ["dlq", "replay", "--", "--config", "x"]) == ["dlq", "replay", "--", "--config", "x"]
    # A command with an option of the same name keeps its own.
    assert hoist(root, ["run", "--config", "f", "--concurrency", "4"]) == ["run", "--config", "f", "--concurrency", "4"]
    # Global options before the subcommand, with their values, stay where they are.
    assert hoist(root, ["-c", "a", "--log-level", "INFO", "status", "x", "--config", "b"]) == [
        "-c", "a", "--log-level", "INFO", "--config", "b", "status", "x"]


def test_double_dash_argument_reaches_the_command() -> None:
    result = cli(["dlq", "replay", "--", "--config", "x"], {"NO_COLOR": "1"})
    assert result.exit_code == 2 and "'--config' is not a distribution id" in result.output


async def test_config_after_the_subcommand_is_used(env_for: dict[str, str], tmp_path: Path) -> None:
    from tests.support import acli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("destinations:\n  - name: after-the-command\n    url: http://127.0.0.1:9/in\n")
    result = await acli(["destinations", "list", "--json", "--config", str(cfg)], env_for)
    assert result.exit_code == 0, result.output
    assert [d["name"] for d in json.loads(result.output)] == ["after-the-command"]


def test_a_short_option_means_one_thing_in_every_command() -> None:
    """-n was --concurrency in `ms07 run` and --namespace in `ms07 recover ...`; -d was
    --destination in `submit` and --detailed in `health`. Now -n is the namespace (as in
    kubectl) and -d the destination; the others keep their long form only."""
    meaning: dict[str, set[str]] = {}

    def walk(cmd: Any) -> None:
        for p in cmd.params:
            longs = [o for o in p.opts if o.startswith("--")]
            for short in (o for o in p.opts if not o.startswith("--")):
                meaning.setdefault(short, set()).update(longs)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(_root())
    # The one known clash, left for the lead to settle: the day-2 interface fixes
    # `ms07 destinations apply -f FILE` (as kubectl), while `runbook export` had -f for
    # --format first. Nothing else may join it.
    known = {"-f": {"--file", "--format"}}
    assert {k: v for k, v in meaning.items() if len(v) > 1 and known.get(k) != v} == {}
    assert meaning["-n"] == {"--namespace"} and meaning["-d"] == {"--destination"}
