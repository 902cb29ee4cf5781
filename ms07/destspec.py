"""A destination given at runtime (an API body, an apply file, a CLI edit), parsed and
validated exactly as the config's.

The same converter reads it (types, unknown keys), the same rules check it
(:func:`ms07.config.validate`: URLs, auth, headers, ranges, timeout below the claim
lease) and the same :func:`ms07.resolved.resolve` gives what it runs with; so a
destination the API accepts is one the config would accept, and an error names the
field. What PostgreSQL stores (``destinations.spec``) is :func:`to_spec` of it: the
config's shape with secret *references* (env var and file names), never a secret value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ms07.config import (
    DestinationConfig,
    Settings,
    _Converter,
    _inherit_breakers,
    parse_yaml,
    validate,
)
from ms07.errors import ConfigError

# Where a secret or its reference lives: a diff says "changed", never the value.
SECRET_SECTIONS = ("auth", "signing")


def to_spec(dest: DestinationConfig) -> dict[str, Any]:
    return dataclasses.asdict(dest)


def from_spec(spec: Mapping[str, Any], source: str = "database") -> DestinationConfig:
    """A stored spec back to its dataclass (types checked again, rules not: see check)."""
    return _Converter(source).dataclass(DestinationConfig, dict(spec), "", None)  # type: ignore[no-any-return]


def parse_one(settings: Settings, raw: Any, source: str, others: Iterable[DestinationConfig] = ()) -> DestinationConfig:
    """One destination from a JSON/YAML mapping, validated beside ``others``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a destination must be a JSON object")
    conv = _Converter(source)
    dest = conv.dataclass(DestinationConfig, raw, "", None)
    if dest.circuit_breaker is not None:  # the keys it leaves out are the global section's
        own = {k: getattr(dest.circuit_breaker, k) for k in conv.given.get("circuit_breaker", ())}
        dest = dataclasses.replace(dest, circuit_breaker=dataclasses.replace(settings.circuit_breaker, **own))
    check(settings, [*(o for o in others if o.name != dest.name), dest], source, guard=True)
    return dest  # type: ignore[no-any-return]


def parse_file(settings: Settings, path: str) -> list[DestinationConfig]:
    """The ``destinations:`` list of a YAML file (a config file, or one holding only that
    list), every one validated; a bad file raises before anything is written."""
    from pathlib import Path

    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    data = parse_yaml(text, path)
    if isinstance(data, dict):
        if "destinations" not in data:
            raise ConfigError(f"{path}: no destinations: list in this file")
        items = data["destinations"]
    else:
        items = data
    conv = _Converter(path)
    dests = conv.convert(list[DestinationConfig], items if items is not None else [], "destinations", None)
    dests = _inherit_breakers(dataclasses.replace(settings, destinations=dests), conv.given)
    check(settings, dests, path, conv.lines, guard=True)
    return dests


def check(settings: Settings, dests: Sequence[DestinationConfig], source: str,
          lines: dict[str, int] | None = None, *, guard: bool = False) -> None:
    """The config's rules over ``dests`` with this installation's global sections; with
    ``guard`` (the operator's doors: API, add, edit, apply) the SSRF guard's too: with
    ``network.deny_private`` an IP literal it would refuse is refused now, not at the
    first delivery. (The config file itself is not held to that: the guard refuses its
    destinations at connect time, as before.)"""
    validate(dataclasses.replace(settings, destinations=list(dests)), source, lines)
    if guard and settings.network.deny_private:
        from ms07.engine import ssrf

        allow = ssrf.allowed_networks(settings.network)
        for dest in dests:
            for key, url in (("url", dest.url), ("health_url", dest.health_url)):
                host = urlsplit(url).hostname if url else None
                if host is None:
                    continue
                literal = "127.0.0.1" if host.lower().rstrip(".") == "localhost" else host
                reason = ssrf.forbidden_reason(literal, allow) if _is_ip(literal) else None
                if reason is not None:
                    raise ConfigError(f"{source}: destinations.{dest.name}.{key}: {reason}, refused by "
                                      "network.deny_private (allow it with network.allow_cidrs)")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def with_destinations(settings: Settings, dests: Sequence[DestinationConfig]) -> Settings:
    return dataclasses.replace(settings, destinations=list(dests))


# ------------------------------------------------------------------------- diff


def _flat(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "headers":
            out.update(_flat(value, f"{path}."))
            if not value:
                out[path] = None
        else:
            out[path] = value
    return out


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ (``auth.token_env``, ``timeout_seconds``)."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


@dataclass
class Diff:
    """What applying a list would do: names added, changed (with the keys), removed."""

    added: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed,
                "unchanged": len(self.unchanged)}

    def lines(self) -> list[str]:
        """The diff as text: secrets (auth, signing) only as "changed"."""
        out = [f"+ {n}" for n in self.added]
        for name, keys in self.changed.items():
            shown = [f"{k} (secret reference changed)" if k.split(".")[0] in SECRET_SECTIONS else k for k in keys]
            out.append(f"~ {name}: {', '.join(shown)}")
        out += [f"- {n}" for n in self.removed]
        return out


def diff(current: Mapping[str, Mapping[str, Any]], wanted: Sequence[DestinationConfig], *, prune: bool) -> Diff:
    d = Diff()
    names = set()
    for dest in wanted:
        names.add(dest.name)
        old = current.get(dest.name)
        if old is None:
            d.added.append(dest.name)
        elif keys := changed_keys(old, to_spec(dest)):
            d.changed[dest.name] = keys
        else:
            d.unchanged.append(dest.name)
    if prune:
        d.removed = sorted(n for n in current if n not in names)
    return d
