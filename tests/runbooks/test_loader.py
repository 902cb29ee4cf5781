"""Every runbook in runbooks/ loads and validates; a bad runbook is one line naming the
file and the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from ms07 import runbooks
from ms07.diagnose.options import PARAMS
from ms07.errors import RunbookError
from ms07.options import specs
from ms07.recover import KubeOptions, RunOptions, procedure
from ms07.runbooks import commands
from tests.deploy.support import ROOT, RUNBOOK_BASE_URL, RUNBOOK_IDS

RUNBOOKS = sorted((ROOT / "runbooks").glob("*.yaml"))


def test_every_guide_section_has_a_runbook() -> None:
    assert {p.stem for p in RUNBOOKS} == RUNBOOK_IDS


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_every_runbook_loads_and_validates(path: Path) -> None:
    book = runbooks.load(path)
    assert book.id == path.stem
    assert (
        book.symptoms and book.prevention and book.phase("diagnose") and book.phase("verification")
    )
    assert book.response_time == runbooks.PRIORITIES[book.priority][0]
    assert book.email == runbooks.TEAMS[book.team][0]
    for step in book.steps:
        assert step.run.startswith("ms07 ") and step.line > 0
    # Markdown export is deterministic and names every command.
    text = runbooks.markdown(book)
    assert text == runbooks.markdown(runbooks.load(path))
    assert all(s.run in text for s in book.steps)


def test_alerts_named_by_a_runbook_link_to_it() -> None:
    (doc,) = [
        d for d in yaml.safe_load_all((ROOT / "deploy/prometheus/alerts.yaml").read_text()) if d
    ]
    links = {r["alert"]: r["annotations"]["runbook_url"] for g in doc["groups"] for r in g["rules"]}
    for book in runbooks.load_all(ROOT / "runbooks"):
        for alert in book.alerts:
            assert links.get(alert) == f"{RUNBOOK_BASE_URL}{book.id}.yaml", (book.id, alert)
    named = {a for b in runbooks.load_all(ROOT / "runbooks") for a in b.alerts}
    assert set(links) == named, "every alert is listed by the runbook it links to"


def test_the_repository_directory_is_found_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MS07_RUNBOOKS_DIR", raising=False)
    assert runbooks.runbooks_dir() == ROOT / "runbooks"
    monkeypatch.setenv("MS07_RUNBOOKS_DIR", str(tmp_path))
    assert runbooks.runbooks_dir() == tmp_path and runbooks.files() == []
    monkeypatch.setenv("MS07_RUNBOOKS_DIR", str(tmp_path / "missing"))
    with pytest.raises(Exception, match="is not a directory"):
        runbooks.runbooks_dir()


def test_installed_copies_are_found_without_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A wheel ships them as ms07/_runbooks (pyproject force-include); the image also has
    /usr/share/ms07/runbooks (Dockerfile)."""
    from ms07.runbooks import loader

    monkeypatch.delenv("MS07_RUNBOOKS_DIR", raising=False)
    site = tmp_path / "site-packages"
    monkeypatch.setattr(loader, "__file__", str(site / "ms07" / "runbooks" / "loader.py"))
    monkeypatch.setattr(loader, "SYSTEM_DIR", tmp_path / "usr-share")
    assert loader.search_path() == [site / "ms07" / "_runbooks", tmp_path / "usr-share"]
    with pytest.raises(Exception, match="no runbooks directory"):
        loader.runbooks_dir()
    (tmp_path / "usr-share").mkdir()
    assert loader.runbooks_dir() == tmp_path / "usr-share"
    (site / "ms07" / "_runbooks").mkdir(parents=True)
    assert loader.runbooks_dir() == site / "ms07" / "_runbooks"
    project = (ROOT / "pyproject.toml").read_text()
    assert '"runbooks" = "ms07/_runbooks"' in project
    assert "COPY runbooks /usr/share/ms07/runbooks" in (ROOT / "Dockerfile").read_text()


def test_every_option_of_every_step_command_reaches_the_library() -> None:
    """A new CLI option must be mapped to its library parameter (or refused) here."""
    root = commands._root()
    for name in commands.allowed():
        group, _, sub = name.partition(" ")
        cmd = (
            root.commands[group].commands[sub]
            if sub and group != "health"
            else root.commands[group]
        )
        params = {p.name for p in cmd.params}
        if group == "diagnose":
            assert params <= PARAMS, name
        elif group == "recover":
            proc = procedure(sub)
            declared = [*specs(proc.options), *specs(RunOptions), *specs(KubeOptions)]
            assert params <= {s.opt.name for s in declared}, name


def test_known_findings_come_from_the_checks() -> None:
    known = commands.known_findings()
    assert known is not None
    assert {
        "queue.dead_consumers",
        "queue.lost_messages",
        "timeouts.probe_unreachable",
        "memory.oom_killed",
        "auth.probe_rejected",
        "health.ready",
        "latency.p95_high",
        "queue.redis_unavailable",
        "memory.kubernetes_unavailable",
    } <= set().union(*known.values())


GOOD = """\
id: sample
title: A sample
severity:
  priority: P3
  response_time: 4h
escalation:
  team: sre
  email: sre@zenia.it
symptoms: [something is off]
diagnose:
  - run: ms07 diagnose queue
remediation:
  - run: ms07 recover reclaim-pending --yes
    when: finding('queue.dead_consumers')
verification:
  - run: ms07 diagnose queue
    expect: not finding('queue.dead_consumers')
prevention: [watch it]
"""


def load_text(tmp_path: Path, text: str, name: str = "sample") -> runbooks.Runbook:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return runbooks.load(path)


def fails(tmp_path: Path, text: str, line: int, *fragments: str) -> str:
    with pytest.raises(RunbookError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'sample.yaml'}:{line}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


def test_the_sample_is_valid(tmp_path: Path) -> None:
    book = load_text(tmp_path, GOOD)
    assert [s.phase for s in book.steps] == ["diagnose", "remediation", "verification"]
    assert book.steps[1].command.changes and not book.steps[0].command.changes
    assert book.steps[1].line == 13


def test_unknown_top_level_key(tmp_path: Path) -> None:
    fails(
        tmp_path,
        GOOD.replace("symptoms:", "symptom:"),
        9,
        "symptom: unknown key",
        "did you mean 'symptoms'?",
    )


def test_unknown_step_key(tmp_path: Path) -> None:
    text = GOOD.replace("    when: finding", "    wehn: finding")
    fails(tmp_path, text, 14, "remediation[0].wehn: unknown key", "did you mean 'when'?")


def test_unknown_command(tmp_path: Path) -> None:
    fails(
        tmp_path,
        GOOD.replace("ms07 recover reclaim-pending", "ms07 recover reclaim"),
        13,
        "remediation[0].run: unknown command `ms07 recover reclaim`",
        "reclaim-pending",
    )
    fails(
        tmp_path,
        GOOD.replace("ms07 diagnose queue\nremediation", "kubectl get pods\nremediation"),
        11,
        "diagnose[0].run",
        "'kubectl' is not `ms07`",
    )
    fails(
        tmp_path,
        GOOD.replace("ms07 diagnose queue\nremediation", "ms07 dlq purge --yes\nremediation"),
        11,
        "`ms07 dlq purge` cannot be a runbook step",
    )


def test_bad_arguments(tmp_path: Path) -> None:
    fails(
        tmp_path,
        GOOD.replace("reclaim-pending --yes", "reclaim-pending --min-idle-ms soon"),
        13,
        "`ms07 recover reclaim-pending`",
        "--min-idle-ms",
    )
    fails(
        tmp_path,
        GOOD.replace(
            "ms07 diagnose queue\nremediation", "ms07 diagnose queue --since 2x\nremediation"
        ),
        11,
        "--since: '2x' is not a duration",
    )
    fails(
        tmp_path, GOOD.replace("reclaim-pending --yes", "scale"), 13, "Missing option '--replicas'"
    )
    fails(
        tmp_path,
        GOOD.replace("ms07 diagnose queue\nremediation", "ms07 diagnose queue --json\nremediation"),
        11,
        "`ms07 runbook run --json` prints the whole run",
    )
    fails(
        tmp_path,
        GOOD.replace("reclaim-pending --yes", "reclaim-pending --yes 'oops"),
        13,
        "cannot split the command line",
    )


def test_bad_when(tmp_path: Path) -> None:
    fails(
        tmp_path,
        GOOD.replace(
            "when: finding('queue.dead_consumers')", "when: finding(queue.dead_consumers)"
        ),
        14,
        "remediation[0].when:",
        "unexpected character '.'",
        "(column 14)",
    )
    fails(
        tmp_path,
        GOOD.replace(
            "when: finding('queue.dead_consumers')", "when: finding('queue.dead_consumer')"
        ),
        14,
        "reports no finding 'queue.dead_consumer'",
        "did you mean 'queue.dead_consumers'?",
    )
    fails(
        tmp_path,
        GOOD.replace("when: finding('queue.dead_consumers')", "when: finding('memory.oom_killed')"),
        14,
        "needs an earlier step that runs `ms07 diagnose memory`",
    )
    fails(
        tmp_path,
        GOOD.replace("when: finding('queue.dead_consumers')", "when: status('disk') == healthy"),
        14,
        "status('disk'): no such check",
    )
    fails(
        tmp_path,
        GOOD.replace("expect: not finding", "expect: eval('1') or finding"),
        17,
        "verification[0].expect:",
        "unknown function 'eval'",
    )


def test_bad_yaml(tmp_path: Path) -> None:
    fails(
        tmp_path,
        GOOD.replace("symptoms: [something is off]", "symptoms: [something is off"),
        10,
        "invalid YAML",
    )
    fails(tmp_path, GOOD + "title: again\n", 19, "duplicate key 'title'")


def test_escalation_matrix_and_teams(tmp_path: Path) -> None:
    fails(
        tmp_path,
        GOOD.replace("response_time: 4h", "response_time: 1h"),
        5,
        "severity.response_time: P3 must be answered within 4h",
    )
    fails(tmp_path, GOOD.replace("priority: P3", "priority: P5"), 4, "not in the escalation matrix")
    fails(
        tmp_path,
        GOOD.replace("email: sre@zenia.it", "email: ops@zenia.it"),
        8,
        "sre is reached at sre@zenia.it",
    )
    fails(tmp_path, GOOD.replace("team: sre", "team: dba"), 7, "'dba' is not a team of the escalation matrix")


def test_structure(tmp_path: Path) -> None:
    fails(tmp_path, GOOD.replace("id: sample", "id: other"), 1, "not a runbook: no top-level line `id: sample`")
    fails(tmp_path, GOOD.replace("id: sample", "id: [sample]"), 1, "not a runbook")
    fails(tmp_path, GOOD.replace("prevention: [watch it]\n", ""), 1, "prevention: is required")
    fails(
        tmp_path,
        GOOD.replace("diagnose:\n  - run: ms07 diagnose queue\n", "diagnose: []\n"),
        10,
        "diagnose: needs at least one step",
    )
    fails(tmp_path, "- just\n- a list\n", 1, "not a runbook")
    fails(tmp_path, "id: sample\n", 1, "title: is required")
    fails(
        tmp_path,
        GOOD.replace("  - run: ms07 recover reclaim-pending --yes\n", "  - title: no command\n"),
        13,
        "remediation[0].run: is required",
    )


def test_a_deeply_nested_when_is_one_short_line(tmp_path: Path) -> None:
    deep = "(" * 3000 + "finding('queue.dead_consumers')" + ")" * 3000
    message = fails(tmp_path, GOOD.replace("when: finding('queue.dead_consumers')", f'when: "{deep}"'), 14,
                    "remediation[0].when:", "nested more than")
    assert len(message) < 500


def test_runbooks_parse_steps_without_the_cli() -> None:
    """Step commands are generated from the same option declarations as the CLI, not taken
    from it: loading and parsing every kind of step imports nothing of ms07.cli."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom ms07.runbooks import commands\n"
        "for line in ['ms07 diagnose all --since 2h', 'ms07 recover scale --replicas 2 --yes',\n"
        "             'ms07 health --detailed', 'ms07 queue stats', 'ms07 dlq list --limit 5',\n"
        "             'ms07 destinations check a b']:\n"
        "    commands.parse(line)\n"
        "print(sorted(m for m in sys.modules if m.startswith('ms07.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert out.stdout.strip() == "[]", out.stdout


def test_a_step_parses_into_the_procedures_options() -> None:
    from ms07.recover import queue_full
    from ms07.recover.procedures import plan_args

    proc, opts, kube = commands.parse(
        "ms07 recover queue-full --watch-seconds 0 --idle-seconds 0.5 --yes"
    ).recover()
    assert proc.name == "queue-full" and kube is not None and kube.overrides() == {}
    assert opts == queue_full.Options(watch_seconds=0.0, idle_seconds=0.5)
    # The resume command repeats what was set, written back from the same fields.
    assert plan_args(opts, kube) == ["--watch-seconds", "0", "--idle-seconds", "0.5"]
