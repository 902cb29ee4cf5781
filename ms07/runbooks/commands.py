"""The ``ms07`` commands a runbook step may run: parsed into the same options the CLI
commands are generated from, run through the library.

Why not invoke the Typer commands in-process? They render to the terminal, end in
``typer.Exit`` and call ``asyncio.run`` themselves; a runbook needs their *results*
(findings, statuses, plan outcomes) for ``when:``, and one event loop. Why not a parser
of our own? Its options would drift from ``--help``. So both come from one declaration:
each option is a field of an options dataclass (:mod:`ms07.options`; the recover registry
:mod:`ms07.recover.procedures`, :mod:`ms07.diagnose.options`, :mod:`ms07.read_options`);
``ms07`` generates its commands from them and :func:`_root` generates the same Click
commands with a parse-only body. A step's line is split with :mod:`shlex` and parsed by
that command (``make_context``: the same options, types, defaults and error messages);
the parameters become the command's options dataclass and go to the library function the
command itself calls (:func:`ms07.diagnose.run_checks_async`, :func:`ms07.recover.run_plan`,
:func:`ms07.ops.healthcheck.fetch_health`, ...), which return data. This package does not
import ``ms07.cli``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from ms07.read_options import READS as READ_OPTIONS
from ms07.recover.procedures import PROCEDURES

# What a step may run. Everything else, even a real command, is refused at load.
READS = set(READ_OPTIONS)
RECOVER = tuple(PROCEDURES)
# Options that belong to `ms07 runbook run`, not to a step.
FORBIDDEN = {
    "as_json": "--json: `ms07 runbook run --json` prints the whole run as JSON",
    "from_step": "--from-step: a step always runs its whole procedure",
    "plan_id": "--plan-id: the runbook's run id is the plan id",
}
# Where a step's command connects, with which credentials, and what it writes where: these
# come from the configuration (the config file, MS07_* variables, KUBECONFIG), never from a
# runbook. A step `ms07 diagnose health --url http://host/collect` sent the API token to
# that host even on `runbook run --dry-run`; `--kubeconfig` with an exec plugin ran a command.
TARGETS = {
    "url": "the engine's URL comes from MS07_HEALTH_URL or service.http_port",
    "health_url": "the engine's URL comes from MS07_HEALTH_URL or service.http_port",
    "kubeconfig": "the cluster and its credentials come from KUBECONFIG or the in-cluster account",
    "context": "the cluster and its credentials come from KUBECONFIG or the in-cluster account",
    "namespace": "the namespace comes from MS07_K8S_NAMESPACE",
    "deployment": "the deployment comes from MS07_K8S_DEPLOYMENT",
    "selector": "the pod selector comes from MS07_K8S_LABEL_SELECTOR",
    "backup": "backups go to MS07_STATE_DIR/backups",
}
# What a step may set: windows, thresholds, counts, timeouts, switches, names of configured
# destinations, pods and consumers. A parameter in neither set is refused (and a test makes
# every new CLI option land in one of them).
SAFE = {
    "since", "stuck_after", "stale_health", "stale_worker", "lost_grace", "token_expiry_warning",
    "probe_timeout", "p95_threshold_ms", "rss_growth_percent", "probe", "notify",
    "replicas", "watch_seconds", "idle_seconds", "consumer_timeout", "consumers_timeout",
    "health_timeout", "timeout", "pod", "lines", "to", "requeue", "min_idle_ms", "older_than",
    "dry_run", "yes", "detailed", "names", "limit",
}

class CommandError(Exception):
    """A step's command line is not one a runbook can run (the message says why)."""


@dataclass
class Command:
    """A parsed step command: ``path`` like ``("recover", "scale")``, the CLI's parameters."""

    text: str
    path: tuple[str, ...]
    args: list[str]  # after the command path, as written
    params: dict[str, Any]
    given: set[str]

    @property
    def kind(self) -> str:
        return self.path[0] if self.path[0] in ("diagnose", "recover") else "read"

    @property
    def name(self) -> str:
        return "ms07 " + " ".join(self.path)

    @property
    def checks(self) -> list[str]:
        """The diagnose checks this command runs (what ``finding()`` can then see)."""
        if self.path[0] != "diagnose":
            return []
        if self.path[1] == "all":
            from ms07.diagnose.runner import CHECKS

            return list(CHECKS)
        return [self.path[1]]

    @property
    def changes(self) -> bool:
        return self.path[0] == "recover" and not self.params.get("dry_run")

    def diagnose_overrides(self) -> dict[str, Any]:
        """The ``DiagnoseOptions`` fields the step sets (the same conversion as the CLI's)."""
        from ms07.diagnose.options import overrides

        return overrides(self.params)

    def recover(self) -> tuple[Any, Any, Any]:
        """(the procedure, its ``Options``, its ``KubeOptions`` or None) from the step's
        parameters: the fields the CLI command was generated from."""
        from ms07.options import fields_from
        from ms07.recover import KubeOptions, procedure

        proc = procedure(self.path[1])
        opts = proc.make(**fields_from(proc.options, self.params))
        kube = KubeOptions(**fields_from(KubeOptions, self.params)) if proc.cluster else None
        return proc, opts, kube


@functools.cache
def _root() -> Any:
    """The commands a step may run, as Click objects, generated from the same declarations
    as ``ms07``'s own commands (:func:`ms07.options.typer_command`: the same options, types,
    defaults and error messages), with a body that does nothing: a step is only parsed here."""
    import typer

    from ms07.diagnose.options import COMMANDS
    from ms07.options import specs, typer_command
    from ms07.read_options import READS as READ_OPTIONS
    from ms07.recover.procedures import PROCEDURES

    def parse_only(ctx: Any, **params: Any) -> None: ...

    root = typer.Typer()
    groups: dict[str, typer.Typer] = {}

    def add(path: tuple[str, ...], declared: list[Any]) -> None:
        command = typer_command(declared, parse_only, name=path[-1], help="")
        if len(path) == 1:
            root.command(path[0])(command)
            return
        if path[0] not in groups:
            groups[path[0]] = typer.Typer()
            root.add_typer(groups[path[0]], name=path[0])
        groups[path[0]].command(path[1])(command)

    for name, entry in COMMANDS.items():
        add(("diagnose", name), entry.specs())
    for name, proc in PROCEDURES.items():
        add(("recover", name), proc.specs())
    for path, options in READ_OPTIONS.items():
        add(path, specs(options))
    return typer.main.get_command(root)


def _is_group(cmd: Any) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def allowed() -> list[str]:
    from ms07.diagnose.runner import CHECKS

    names = [f"diagnose {c}" for c in [*CHECKS, "all"]] + [f"recover {r}" for r in RECOVER]
    return names + sorted(" ".join(p) for p in READS)


def _is_allowed(path: tuple[str, ...]) -> bool:
    if path in READS:
        return True
    if len(path) == 2 and path[0] == "recover":
        return path[1] in RECOVER
    return len(path) == 2 and path[0] == "diagnose"


def parse(line: Any) -> Command:
    """Parse one step's ``ms07 ...`` line as the CLI would; :class:`CommandError` if it
    is not a command a runbook can run or its arguments are wrong."""
    if not isinstance(line, str) or not line.strip():
        raise CommandError("expected an `ms07 ...` command line")
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f"cannot split the command line: {exc}") from None
    if argv[0] != "ms07":
        raise CommandError(f"a step runs an ms07 command; {argv[0]!r} is not `ms07`")
    words = argv[1:]
    if not words or words[0].startswith("-"):
        raise CommandError("`ms07` needs a command, e.g. `ms07 diagnose queue`")
    if any(w in ("-h", "--help") for w in words):
        raise CommandError("--help is not a step")
    cmd = _root()
    path: list[str] = []
    while _is_group(cmd) and words and not words[0].startswith("-"):
        sub = cmd.commands.get(words[0])
        if sub is None and (not path or path[0] not in ("diagnose", "recover")):
            raise CommandError(
                f"`ms07 {' '.join([*path, words[0]])}` cannot be a runbook step; steps can run: ms07 "
                + ", ms07 ".join(allowed())
            )
        if sub is None:
            known = ", ".join(sorted(cmd.commands))
            where = f"ms07 {' '.join(path)}".strip()
            raise CommandError(f"unknown command `{where} {words[0]}` (`{where}` has: {known})")
        path.append(words.pop(0))
        cmd = sub
    name = "ms07 " + " ".join(path)
    if _is_group(cmd):
        raise CommandError(f"`{name}` needs a subcommand ({', '.join(sorted(cmd.commands))})")
    if not _is_allowed(tuple(path)):
        raise CommandError(
            f"`{name}` cannot be a runbook step; steps can run: ms07 " + ", ms07 ".join(allowed())
        )
    try:
        ctx = cmd.make_context(name, list(words), resilient_parsing=False)
    except Exception as exc:
        message = getattr(exc, "format_message", None)
        if message is None:
            raise
        raise CommandError(f"`{name}`: {message()}") from None
    params = dict(ctx.params)
    given = {p for p in params if getattr(ctx.get_parameter_source(p), "name", "") == "COMMANDLINE"}
    for key in sorted(given & set(FORBIDDEN)):
        raise CommandError(f"`{name}`: {FORBIDDEN[key]}")
    for key in sorted(given - SAFE):
        flag = next((p.opts[0] for p in cmd.params if p.name == key), key)
        why = TARGETS.get(key, "it is not one a runbook may set")
        raise CommandError(
            f"`{name} {flag}`: a step may not choose where ms07 connects, with which credentials, "
            f"or where it writes: {why}"
        )
    command = Command(line.strip(), tuple(path), words, params, given)
    _check_options(command)
    return command


def _check_options(command: Command) -> None:
    """What the command's own body would refuse, refused at load."""
    from ms07.errors import Ms07Error

    try:
        if command.kind == "diagnose":
            from ms07.diagnose.options import PARAMS

            unknown = set(command.params) - PARAMS
            if unknown:
                raise CommandError(
                    f"`{command.name} --{unknown.pop()}` has no counterpart in "
                    "DiagnoseOptions: ms07 itself needs fixing"
                )
            command.diagnose_overrides()
        elif command.kind == "recover":
            command.recover()
    except Ms07Error as exc:
        raise CommandError(f"`{command.name}`: {exc}") from None


# --------------------------------------------------------------------------- finding ids


@functools.cache
def known_findings() -> dict[str, set[str]] | None:
    """Every finding id each diagnose check can report, read from the checks' source
    (``r.add("name", ...)``, ``not_checked("dependency", ...)``, ``part(r, "name", ...)``),
    and from the modules a check imports that say ``CHECK_PART = True`` (a part of a check
    kept in a module of its own, such as diagnose/retention.py for the queue check).

    ``None`` when the source is not available (then ids are not checked at load)."""
    from ms07.diagnose.runner import CHECKS

    out: dict[str, set[str]] = {}
    for check, fn in CHECKS.items():
        module = sys.modules[fn.__module__]
        parts = [m for m in vars(module).values() if inspect.ismodule(m) and getattr(m, "CHECK_PART", False)]
        try:
            trees = [ast.parse(inspect.getsource(m)) for m in (module, *parts)]
        except (OSError, TypeError):
            return None
        names = {"failed", "postgres_unavailable", "redis_unavailable"}
        for node in (n for tree in trees for n in ast.walk(tree)):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            callee = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else getattr(node.func, "id", "")
            )
            args = [
                a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                for a in node.args
            ]
            if callee == "add" and args[0]:
                names.add(args[0])
            elif callee == "not_checked" and args[0]:
                names.add(f"{args[0]}_unavailable")
            elif callee == "part" and len(args) > 1 and args[1]:
                names.add(f"{args[1].replace(' ', '_')}_failed")
        out[check] = {f"{check}.{n}" for n in names}
    return out
