"""Command options declared once: a dataclass field carries its command-line flag and help.

A command's ``Options`` dataclass is the one declaration of what the command takes: the
field's default is the option's default, :func:`opt` adds the flag, the help text and the
range. From it the CLI builds its Typer command (``ms07/cli/recover.py``), a resume command
line is written back (:func:`argv`), and runbook steps parse into the same dataclass
(``ms07/runbooks/commands.py``). Fields without :func:`opt` are library-only.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from typing import Any

FIELD_DEFAULT: Any = type("FieldDefault", (), {"__repr__": lambda self: "<the field's default>"})()


@dataclass(frozen=True)
class Opt:
    """How a field appears on the command line."""

    flag: str
    help: str
    short: str | None = None
    min: float | None = None
    max: float | None = None
    path: bool = False  # the command line takes a path; the field keeps it as a str
    param: str | None = None  # the parameter's name when it is not the flag's (--json: as_json)
    late: bool = False  # listed after the shared options (e.g. the Kubernetes --timeout)
    duration: bool = False  # the command line takes 90s, 30m, 2h, 1d; the field holds seconds
    argument: bool = False  # positional (the flag is then only its name)
    cli_default: Any = FIELD_DEFAULT  # the command line's default when not the field's (None: the config's)

    @property
    def name(self) -> str:
        """The parameter name (what runbook SAFE/TARGETS lists and ``locals()`` use)."""
        return self.param or self.flag.lstrip("-").replace("-", "_")


def opt(flag: str, help: str, *, default: Any = MISSING, factory: Any = MISSING, **how: Any) -> Any:
    """A dataclass field that is also a command-line option."""
    meta = {"cli": Opt(flag, help, **how)}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Spec:
    """One command-line option of an ``Options`` class: its field, type and default."""

    field: str
    opt: Opt
    type: Any  # the resolved annotation (``int | None``, ``list[str]``, ...)
    default: Any  # MISSING: required

    @property
    def cli_default(self) -> Any:
        return self.default if self.opt.cli_default is FIELD_DEFAULT else self.opt.cli_default

    @property
    def multiple(self) -> bool:
        return typing.get_origin(self.type) is list

    @property
    def required(self) -> bool:
        return self.default is MISSING


def specs(cls: type) -> list[Spec]:
    """The command-line options of ``cls`` in declaration order (``late`` ones last)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        o = f.metadata.get("cli")
        if o is None:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out.append(Spec(f.name, o, hints[f.name], default))
    return [s for s in out if not s.opt.late] + [s for s in out if s.opt.late]


def argv(items: Iterable[tuple[Spec, Any]]) -> list[str]:
    """The options whose value differs from the default, as command-line words (for a
    resume command: the operator's choices, nothing else)."""
    out: list[str] = []
    for spec, value in items:
        if not spec.required and value == spec.default:
            continue
        for v in value if isinstance(value, list) else [value]:
            if v is True:
                out.append(spec.opt.flag)
            elif v is not None and v is not False:
                out += [spec.opt.flag, f"{v:g}" if isinstance(v, float) else str(v)]
    return out


def argv_of(obj: Any, late: bool | None = None) -> list[str]:
    """:func:`argv` of a dataclass instance (``late``: only the late ones, or only the others)."""
    return argv(
        (s, getattr(obj, s.field)) for s in specs(type(obj)) if late is None or s.opt.late == late
    )


def fields_from(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` from a parsed command's parameters (by parameter name; paths
    kept as str, an unset repeatable option as an empty list)."""
    out = {}
    for spec in specs(cls):
        value = params.get(spec.opt.name, spec.cli_default)
        if spec.opt.path and value is not None:
            value = str(value)
        elif spec.multiple:
            value = list(value or [])
        out[spec.field] = value
    return out


def typer_command(
    declared: list[Spec], body: Callable[..., None], *, name: str, help: str
) -> Callable[..., None]:
    """A Typer command function whose parameters are ``declared`` (flag, help, range,
    default as the fields say) and which calls ``body(ctx, **params)``. The CLI registers it;
    runbooks parse step lines with it (a parse-only ``body``)."""
    import inspect
    from pathlib import Path
    from typing import Annotated

    import typer

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for spec in declared:
        o, kind, default = spec.opt, spec.type, spec.cli_default
        if o.path:
            kind = Path | None
        elif o.duration:
            kind = str if default is not None else str | None
        elif spec.multiple:
            kind, default = spec.type | None, None
        elif default is None:
            kind = spec.type | None
        if o.argument:
            info = typer.Argument(help=o.help)
        else:
            info = typer.Option(
                o.flag, *([o.short] if o.short else []), help=o.help or None, min=o.min, max=o.max
            )
        params.append(
            inspect.Parameter(
                o.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if spec.required else default,
                annotation=Annotated[kind, info],
            )
        )

    def command(ctx: Any, **values: Any) -> None:
        body(ctx, **values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    return command
