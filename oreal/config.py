"""Typed configs: dataclasses filled from YAML plus `key=value` overrides, validated.

An unknown key or a value of the wrong type is an error that names the key. Nested
dataclasses are addressed with dots (`sampling.temperature=0.7`).
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING):
    """A dataclass field with its help text, which `oreal config show` and `--help` print."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def describe(cls, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, help) of every field of a config dataclass, nested sections included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += describe(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f.metadata.get("help", "")))
    return out


def _scalar(v) -> str:
    """A value as YAML that reads back as itself: plain where YAML keeps it, else JSON (also YAML)."""
    import json

    if isinstance(v, str):
        try:
            plain = "\n" not in v and " #" not in v and yaml.safe_load(v) == v
        except yaml.YAMLError:
            plain = False
        return v if plain else json.dumps(v)
    return json.dumps(v)


def show_config(cfg, indent: str = "") -> str:
    """The config as YAML, every key with its help as a comment (`oreal config show`)."""
    lines = []
    for f in dataclasses.fields(cfg):
        v, help_ = getattr(cfg, f.name), f.metadata.get("help", "")
        if dataclasses.is_dataclass(v):
            lines.append(f"{indent}{f.name}:  # {help_}" if help_ else f"{indent}{f.name}:")
            lines.append(show_config(v, indent + "  "))
        else:
            lines.append(f"{indent}{f.name}: {_scalar(v)}" + (f"  # {help_}" if help_ else ""))
    return "\n".join(lines)


def as_config(cls: type[T], value, key: str) -> T:
    """The section `key` given in Python as a mapping (or already built): `algo={"name": "grpo"}`."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return _build(cls, value, prefix=key + ".")
    raise ConfigError(f"{key}: expected a {cls.__name__} or a mapping, got {type(value).__name__} {value!r}")


def coerce_fields(obj, prefix: str = "") -> None:
    """Check (and convert, as a YAML value is) every plain field of a config dataclass built in
    Python: `OREALConfig(steps="ten")` is a ConfigError naming `steps`, not a TypeError later.
    Nested sections are left to `as_config`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(hints[f.name]) or dataclasses.is_dataclass(getattr(obj, f.name)):
            continue
        setattr(obj, f.name, _coerce(prefix + f.name, getattr(obj, f.name), hints[f.name]))


def _coerce(key: str, value: Any, tp) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if isinstance(value, str):  # `trackers=tensorboard,wandb`: a list with no brackets (zsh globs those)
            value = [yaml.safe_load(v) for v in value.split(",")] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def unknown_key(key: str, names, prefix: str = "") -> ConfigError:
    """The error of a key that is not one of `names`, listing them (no guess at the nearest: the
    nearest to an earlier key, `optim.rm_lr`, is `optim.min_lr`, which is not what it was)."""
    return ConfigError(f"unknown config key '{prefix}{key}'; known keys: {', '.join(sorted(names))}")


def checks_keys(cls: type[T]) -> type[T]:
    """A config dataclass whose constructor refuses an unknown keyword as the YAML reader does
    (ConfigError naming the key), not with Python's TypeError: `OREALConfig(stepz=3)`."""
    init, names = cls.__init__, {f.name for f in dataclasses.fields(cls)}

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for k in kwargs:
            if k not in names:
                raise unknown_key(k, names)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            raise unknown_key(k, names, prefix)
        kwargs[k] = _coerce(prefix + k, v, hints[k])
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: {p} is not a section")
    d[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """['a.b=3', 'c=hello'] -> {'a': {'b': 3}, 'c': 'hello'}; values are read as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        _set_dotted(out, k.strip(), yaml.safe_load(v) if v.strip() else "")
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_values(path: str | Path | None = None, overrides: list[str] | dict | None = None, cls=None) -> dict:
    """The raw mapping of a YAML file with dotted overrides merged in (errors name the file).
    `cls` is accepted for callers that pass it; every key is checked against it by `from_values`."""
    values: dict = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    if overrides:
        ov = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        values = _merge(values, ov)
    return values


def from_values(cls: type[T], values: dict) -> T:
    """A typed, validated `cls` from a raw mapping."""
    return _build(cls, values)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None) -> T:
    return from_values(cls, read_values(path, overrides, cls))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
