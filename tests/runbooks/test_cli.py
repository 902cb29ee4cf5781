"""``ms07 runbook list|show|export|validate`` and the CLI's errors (no servers needed)."""

from __future__ import annotations

import json
from pathlib import Path

from ms07 import runbooks
from tests.deploy.support import ROOT, RUNBOOK_IDS
from tests.support import cli

ENV = {"NO_COLOR": "1", "COLUMNS": "200", "MS07_RUNBOOKS_DIR": str(ROOT / "runbooks")}


def test_list_shows_id_title_and_severity() -> None:
    result = cli(["runbook", "list"], ENV)
    assert result.exit_code == 0, result.output
    for rid in RUNBOOK_IDS:
        assert rid in result.output
    assert "P1 (< 15m)" in result.output and "devops@zenia.it" in result.output
    data = json.loads(cli(["runbook", "list", "--json"], ENV).stdout)
    by_id = {d["id"]: d for d in data}
    assert set(by_id) == RUNBOOK_IDS
    assert (by_id["db-connection-loss"]["priority"], by_id["db-connection-loss"]["team"]) == (
        "P1",
        "devops",
    )


def test_show_renders_markdown_for_the_terminal() -> None:
    result = cli(["runbook", "show", "queue-message-loss"], ENV)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Messages lost from the queue" in out and "Symptoms" in out and "Prevention" in out
    assert "ms07 recover reclaim-pending --yes" in out
    assert "Only when: finding('queue.dead_consumers')" in out
    assert "# " not in out and "```" not in out  # rendered, not raw Markdown


def test_export_markdown_is_the_library_text(tmp_path: Path) -> None:
    result = cli(["runbook", "export", "worker-crash", "--format", "markdown"], ENV)
    assert result.exit_code == 0, result.output
    expected = runbooks.markdown(runbooks.load(ROOT / "runbooks" / "worker-crash.yaml"))
    assert result.stdout == expected
    assert (
        expected.startswith("# Worker pods crash\n")
        and "```sh\nms07 recover worker-crash\n```" in expected
    )
    out = tmp_path / "wiki.md"
    assert cli(["runbook", "export", "worker-crash", "-o", str(out)], ENV).exit_code == 0
    assert out.read_text() == expected
    as_json = json.loads(cli(["runbook", "export", "worker-crash", "--format", "json"], ENV).stdout)
    assert as_json["escalation"] == {"team": "sre", "email": "sre@zenia.it"}
    assert as_json["remediation"][1]["when"] == "finding('queue.dead_consumers')"


def test_unknown_runbook_and_format() -> None:
    result = cli(["runbook", "show", "queue-ful"], ENV)
    assert result.exit_code == 4
    assert (
        "no runbook 'queue-ful'" in result.output and "did you mean 'queue-full'?" in result.output
    )
    result = cli(["runbook", "export", "timeouts", "--format", "pdf"], ENV)
    assert result.exit_code == 2 and "--format: 'pdf' is not one of markdown, json" in result.output


def test_validate_every_runbook_and_a_bad_file(tmp_path: Path) -> None:
    result = cli(["runbook", "validate"], ENV)
    assert result.exit_code == 0, result.output
    assert result.output.count("ok: ") == len(RUNBOOK_IDS)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "runbooks" / "timeouts.yaml")
        .read_text()
        .replace("id: timeouts", "id: bad")
        .replace("ms07 diagnose latency", "ms07 diagnose latencies")
    )
    result = cli(["runbook", "validate", str(bad), str(ROOT / "runbooks" / "timeouts.yaml")], ENV)
    assert result.exit_code == 2
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "latencies" in text)
    assert (
        f"error: {bad}:{line}: diagnose[2].run: unknown command `ms07 diagnose latencies`"
        in result.output
    )
    assert "ok: " in result.output and "Traceback" not in result.output


def test_run_refuses_json_without_dry_run_or_yes_and_bad_files(tmp_path: Path) -> None:
    result = cli(["runbook", "run", "timeouts", "--json"], ENV)
    assert result.exit_code == 2 and "--json needs --dry-run or --yes" in result.output
    bad = tmp_path / "broken.yaml"
    bad.write_text("id: broken\ntitle: [oops\n")
    result = cli(["runbook", "run", str(bad), "--dry-run"], ENV)
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {bad}:") and "invalid YAML" in result.output
