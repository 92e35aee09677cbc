"""Search spaces: dotted config keys mapped to distributions, checked against the config before any trial.

    search:
      method.terms.ring_kl.weight: {loguniform: [0.1, 10]}
      method.terms.adversarial.weight: {uniform: [0.0, 2.0]}
      method.terms.ring_kl.temperature: {choice: [1, 3, 4]}
      method.terms.fused_kl.rampup_epochs: {int: [0, 5]}       # inclusive bounds
"""

from __future__ import annotations

from typing import Any

from ray import tune

from okd_ray.config import apply_overrides, override, validate
from okd_ray.errors import ConfigError

KINDS = ("uniform", "loguniform", "choice", "int")


def parse_space(raw_space: Any, raw_config: dict[str, Any]) -> dict[str, Any]:
    """Turn ``{key: {kind: args}}`` into Tune distributions; every key and bound is checked first."""
    if not isinstance(raw_space, dict) or not raw_space:
        raise ConfigError("search: give a mapping of dotted config keys to distributions, e.g. "
                          "method.terms.ring_kl.weight: {loguniform: [0.1, 10]}")
    space = {}
    for key, spec in raw_space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"search.{key}: give one of {', '.join(KINDS)}, e.g. {{uniform: [0, 1]}}; got {spec!r}")
        kind, args = next(iter(spec.items()))
        values = _bounds(key, kind, args)
        for value in values:  # each extreme must be a valid config value for that key
            try:
                validate(apply_overrides(raw_config, params_to_overrides({key: value})))
            except ConfigError as e:
                raise ConfigError(f"search.{key}: the value {value!r} is not valid here:\n{e}") from None
        space[key] = _domain(kind, args)
    return space


def _bounds(key: str, kind: str, args: Any) -> list[Any]:
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search.{key}: choice needs a non-empty list of values")
        return args
    if not isinstance(args, list) or len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
        raise ConfigError(f"search.{key}: {kind} needs [low, high]; got {args!r}")
    low, high = args
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int) and low <= high):
        raise ConfigError(f"search.{key}: int needs integer bounds with low <= high; got {args!r}")
    if kind in ("uniform", "loguniform") and not low < high:
        raise ConfigError(f"search.{key}: {kind} needs low < high; got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search.{key}: loguniform needs low > 0; got {args!r}")
    return [low, high]


def _domain(kind: str, args: Any):
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "int":
        return tune.randint(args[0], args[1] + 1)  # Tune's upper bound is exclusive
    return tune.choice(args)


def params_to_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's sampled values as ``key=value`` overrides (values in YAML syntax)."""
    return [override(key, value) for key, value in params.items()]
