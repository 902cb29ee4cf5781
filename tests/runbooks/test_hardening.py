"""A runbook file is input, not configuration: its steps cannot choose where ms07 connects,
with which credentials or where it writes (not even in a dry run), and the runbook commands
read only runbook files and quote nothing of any other file."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from ms07 import runbooks
from ms07.errors import Ms07Error, RunbookError
from ms07.runbooks import commands
from tests.support import Sink, acli, cli

SECRET = "hunter2-s3cret-value"
SAMPLE = """\
id: {id}
title: A sample
severity:
  priority: P3
  response_time: 4h
escalation:
  team: sre
  email: sre@zenia.it
symptoms: [something is off]
diagnose:
  - run: {run}
remediation: []
verification:
  - run: ms07 diagnose queue
prevention: [watch it]
"""


def _runbook(tmp_path: Path, run: str, rid: str = "sample") -> Path:
    path = tmp_path / f"{rid}.yaml"
    path.write_text(SAMPLE.format(id=rid, run=run))
    return path


def _command(name: str):  # type: ignore[no-untyped-def]
    group, _, sub = name.partition(" ")
    root = commands._root()
    return root.commands[group].commands[sub] if sub else root.commands[group]


def _target_lines() -> list[str]:
    """Every target or credential option of every command a step may run, as a step line."""
    lines = []
    for name in commands.allowed():
        cmd = _command(name)
        required = " ".join(f"{p.opts[0]} 1" for p in cmd.params if p.required and p.opts[0].startswith("--"))
        for p in cmd.params:
            if p.name in commands.TARGETS:
                lines += [f"ms07 {name} {opt} http://127.0.0.1:9/collect {required}".strip() for opt in p.opts]
    return lines


def test_every_option_of_a_step_command_is_classified() -> None:
    """A new CLI option is refused in steps until it is put in SAFE or TARGETS; anything that
    looks like a place or a credential must be a target."""
    looks_like_a_target = re.compile(r"url|host|port|config|context|namespace|deployment|selector|backup|"
                                     r"file|dir|path|token|secret|password|cert|key|output")
    only_named_so = {"token_expiry_warning"}  # a duration: warn when a token expires within it
    for name in commands.allowed():
        for p in _command(name).params:
            assert p.name in commands.SAFE | set(commands.TARGETS) | set(commands.FORBIDDEN), (name, p.name)
            if getattr(p, "envvar", None) or (looks_like_a_target.search(p.name) and p.name not in only_named_so):
                assert p.name in commands.TARGETS, f"`ms07 {name} {p.opts[0]}` sets a target: add it to TARGETS"
    assert not commands.SAFE & set(commands.TARGETS)


@pytest.mark.parametrize("line", _target_lines())
def test_a_step_may_not_set_a_target_or_credential(line: str) -> None:
    with pytest.raises(commands.CommandError, match="a step may not choose where ms07 connects"):
        commands.parse(line)


def test_the_named_cases_are_among_them() -> None:
    lines = _target_lines()
    for fragment in ("diagnose health --url", "health --url", "recover db-connection --health-url",
                     "recover worker-crash --kubeconfig", "recover scale --context",
                     "recover queue-full --namespace", "recover queue-full --deployment",
                     "recover worker-crash --selector", "recover queue-full --backup",
                     "diagnose memory --url", "diagnose all --url"):
        assert any(f"ms07 {fragment} " in line for line in lines), fragment
    assert "ms07 recover worker-crash -n http://127.0.0.1:9/collect" in lines  # short forms too
    with pytest.raises(commands.CommandError, match="may not choose"):
        commands.parse("ms07 recover worker-crash --kubeconfig=/tmp/kubeconfig")


async def test_a_dry_run_sends_the_token_nowhere_a_step_names(tmp_path: Path, env_for: dict[str, str]) -> None:
    sink = await Sink().start()
    try:
        path = _runbook(tmp_path, f"ms07 diagnose health --url {sink.url('/collect')}")
        result = await acli(["runbook", "run", str(path), "--dry-run"], {**env_for, "MS07_API_TOKEN": SECRET})
        assert result.exit_code == 2, result.output
        assert "--url" in result.output and "may not choose where ms07 connects" in result.output
        assert sink.received == [], "the step reached the URL it named"
        result = await acli(["runbook", "validate", str(path)], env_for)
        assert result.exit_code == 2 and "Traceback" not in result.output
    finally:
        await sink.stop()


def test_a_kubeconfig_exec_plugin_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "plugin-ran"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:9"}}}}]
        users:
          - name: u
            user:
              exec:
                apiVersion: client.authentication.k8s.io/v1beta1
                command: sh
                args: ["-c", "touch {marker}"]
        contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
        current-context: x
        """))
    path = _runbook(tmp_path, f"ms07 recover worker-crash --dry-run --kubeconfig {kubeconfig}")
    with pytest.raises(RunbookError, match="--kubeconfig.*KUBECONFIG"):
        runbooks.load(path)
    assert not marker.exists()


# ------------------------------------------------------------------ reading only runbook files


def _show(target: Path | str) -> tuple[int, str]:
    result = cli(["runbook", "show", str(target)], {"NO_COLOR": "1", "COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "name, content",
    [
        ("secrets.yaml", f"id: {SECRET}\n"),  # was: "'<value>' must be the file's name"
        ("kubeconfig.yaml", f"apiVersion: v1\nusers: [{{name: admin, user: {{token: {SECRET}}}}}]\n"),
        ("creds.yaml", f"{SECRET}: [unclosed\n"),  # a YAML error
        ("dup.yaml", f"{SECRET}: 1\n{SECRET}: 2\n"),  # was: "duplicate key '<key>'"
        ("settings.yml", f"severity: {{priority: {SECRET}}}\n"),
    ],
)
def test_show_quotes_nothing_of_a_file_that_is_not_a_runbook(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, output = _show(path)
    assert code != 0 and "Traceback" not in output
    assert "not a runbook" in output, output
    assert SECRET not in output and "apiVersion" not in output, output
    with pytest.raises(Ms07Error) as info:
        runbooks.load(path)
    assert SECRET not in str(info.value)


def test_show_reads_only_yaml_files(tmp_path: Path) -> None:
    """Not a .yaml file, not through a link to another file, not a FIFO (it would block),
    not a huge file: refused before reading."""
    plain = tmp_path / "token"
    plain.write_text(f"id: token\n{SECRET}: x\n")
    code, output = _show(plain)
    assert code != 0 and "not a runbook file" in output and SECRET not in output, output
    link = tmp_path / "draft.yaml"
    link.symlink_to(plain)
    code, output = _show(link)
    assert code != 0 and "not a runbook file" in output and SECRET not in output, output
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(RunbookError, match="not a regular file"):
        runbooks.load(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("id: big\n" + "# padding\n" * 30_000)
    with pytest.raises(RunbookError, match="at most"):
        runbooks.load(big)


def test_a_runbook_draft_still_gets_its_helpful_errors(tmp_path: Path) -> None:
    path = _runbook(tmp_path, "ms07 diagnose queue --since 2x")
    code, output = _show(path)
    assert code != 0 and "--since: '2x' is not a duration" in output, output
    assert _show(_runbook(tmp_path, "ms07 diagnose queue"))[0] == 0
