"""The registries: loss terms by name, and methods as rows of terms. Users add theirs from a plugin."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce

from okd_ray.errors import ConfigError
from okd_ray.registry import origin, register, taken

from .term import Need, Term, TermSpec

TERMS: dict[str, type[Term]] = {}
METHODS: dict[str, Method] = {}


@dataclass(frozen=True)
class Method:
    """A method is its terms; what the population exchanges follows from their needs."""

    name: str
    terms: tuple[TermSpec, ...]

    @property
    def needs(self) -> frozenset[Need]:
        return reduce(frozenset.union, (spec.term.needs for spec in self.terms), frozenset())

    @property
    def min_members(self) -> int:
        return 2 if self.needs else 1

    @property
    def has_feature_terms(self) -> bool:
        return any(spec.term.update == "feature" for spec in self.terms)

    def columns(self) -> list[str]:
        """The loss columns its members report, in row order."""
        return [c for spec in self.terms for c in spec.term.columns()]


def register_term(term: type[Term]) -> type[Term]:
    """Make ``term`` known by its name (usable as a class decorator); a name stands for one class only."""
    for attr in ("name", "loss"):
        if not hasattr(term, attr):
            raise TypeError(f"{term.__qualname__} is no loss term: it has no {attr!r}")
    if term.update not in ("logit", "feature"):
        raise TypeError(f"{term.__qualname__}.update must be 'logit' or 'feature', not {term.update!r}")
    return register(TERMS, "term", term.name, term)


def register_method(name: str, terms: Iterable[type[Term] | TermSpec]) -> Method:
    """Register a method as a row of terms (classes, or ``Term.configured(**defaults)``); terms are
    registered with it. Registering the same row again (a plugin imported twice) is harmless."""
    specs = tuple(t if isinstance(t, TermSpec) else TermSpec(t) for t in terms)
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise ConfigError(f"method {name!r}: give one or more terms with distinct names, got {names}")
    for spec in specs:
        register_term(spec.term)
    method = Method(name, specs)
    known = METHODS.get(name)
    if known is not None and [(origin(s.term), s.defaults) for s in known.terms] != [
        (origin(s.term), s.defaults) for s in specs
    ]:
        built_in = all(origin(s.term).startswith("okd_ray.") for s in known.terms)  # registered before plugins
        raise ConfigError(taken("method", name, f"terms {', '.join(s.name for s in known.terms)}", built_in))
    METHODS[name] = method
    return method
