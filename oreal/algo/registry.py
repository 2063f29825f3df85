"""Registries of the algorithm's named pieces (objectives, advantage estimators, aggregations).

A piece registers itself where it is defined, with a decorator (veRL's `register_policy_loss`):

    @register_objective("ppo_clip", help="-min(r A, clip(r) A) per token", clips=True)
    def ppo_clip_objective(inputs, cfg): ...

The registry maps the name to the function (a dict, so a test may `monkeypatch.setitem` one in);
the keyword arguments are the entry's properties, read with `prop` (a default for an entry set in
by hand). `AlgoConfig` validates against the registry and builds its help text from `describe`, so
a name is written once; code asks an entry's property, never compares its name.
"""
from __future__ import annotations

from typing import Any, Callable


class Registry(dict):
    """name -> function, in the order registered; `props` hold each entry's properties."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.props: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **props) -> Callable[[Callable], Callable]:
        """A decorator that registers the function under `name` with `props` (`help`: the short
        text the config's help shows for this value)."""

        def deco(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = fn
            self.props[name] = props
            return fn

        return deco

    def prop(self, name: str, key: str, default: Any = None) -> Any:
        """A property of the entry `name`: what it registered with, else `default`."""
        return self.props.get(name, {}).get(key, default)

    def describe(self) -> str:
        """`name (help) | name (help) | ...` for a setting's help text."""
        return " | ".join(f"{name} ({h})" if (h := self.prop(name, "help")) else name for name in self)
