"""Name tables that plugins add to (terms, models, data sets): one rule for a name that is already taken."""

from __future__ import annotations

from functools import partial
from typing import Any, TypeVar

from okd_ray.errors import ConfigError

T = TypeVar("T")


def register(table: dict[str, Any], kind: str, name: str, value: T) -> T:
    """``table[name] = value``. A name stands for one value: another under a taken name is an error, the same one
    again (a plugin imported twice, in a new process or under another module name) is harmless."""
    known = table.get(name)
    if known is not None and origin(known) != origin(value):
        raise ConfigError(taken(kind, name, origin(known), origin(known).startswith("okd_ray.")))
    table[name] = value
    return value


def taken(kind: str, name: str, owner: str, built_in: bool) -> str:
    """What to say of a name another registration holds: a built-in's (a plugin older than it) or a plugin's."""
    who = f"okd-ray's built-in {kind} ({owner})" if built_in else f"registered by {owner}"
    return f"{kind} {name!r} is {who}; give yours another name (e.g. 'my_{name}') and use that name in the config"


def origin(value: Any) -> str:
    """Where ``value`` is defined, by name (a ``partial`` with its arguments): equal for a re-imported plugin."""
    if isinstance(value, partial):
        return f"{origin(value.func)}(*{value.args}, **{value.keywords})"
    return f"{value.__module__}.{value.__qualname__}"
