"""Dataclass configs loaded from YAML 1:1, validated on load.

Every config in layerloop is a dataclass whose fields carry a docstring and, for numbers, an allowed range
(:func:`ranged`). :func:`from_dict` builds one from a mapping: unknown keys are rejected with a hint, nested
dataclasses are built recursively, and a value out of range fails naming the key, the value and the range.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""Exponent notation without a dot (``1e-4``), which YAML 1.1 reads as a string."""


class ConfigError(ValueError):
    """A config value that is missing, unknown, of the wrong type or out of range."""


def ranged(default: Any, lo: float | None = None, hi: float | None = None, *,
           choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with a default and an allowed closed range (or a set of choices)."""
    meta: dict[str, Any] = {"min": lo, "max": hi, "choices": choices}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_ranges(obj: Any, where: str = "") -> None:
    """Check every ranged field of a dataclass instance (recursively); raise :class:`ConfigError`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, key + ".")
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item) and not isinstance(item, type):
                    check_ranges(item, f"{key}[{i}].")
        lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key} = {value!r}: must be one of {', '.join(map(repr, choices))}")
        if value is None or (lo is None and hi is None):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key} = {value!r}: must be a number in [{lo}, {hi}]")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ConfigError(f"{key} = {v!r}: out of range, allowed [{lo}, {hi}]")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r}: expected {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a mapping for {tp.__name__}")
        return _build(tp, value, key + ".")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _, val_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a mapping")
        return {k: _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected a whole number")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: expected text")
        return value
    return value


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{where}{key}: unknown key{hint}")
        kwargs[key] = _convert(hints[key], value, f"{where}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {exc}") from exc
    except ConfigError as exc:
        # A nested config checks itself when built; its error must still say where in the file it is.
        raise ConfigError(_located(where, str(exc), names)) from None


def _located(where: str, message: str, names: list[str]) -> str:
    """``message`` of a config at ``where`` (``hotend.``, ``macros[0].``), with that path in front."""
    if not where or message.startswith(where):
        return message
    if any(message.startswith(name) and message[len(name):len(name) + 1] in (" ", ".", "[", ":")
           for name in names):
        return f"{where}{message}"
    return f"{where.rstrip('.')}: {message}"


def from_dict(cls: type[T], data: dict[str, Any], source: str = "") -> T:
    """Build and validate a ``cls`` instance from a mapping (as loaded from YAML)."""
    prefix = f"{source}: " if source else ""
    try:
        obj = _build(cls, data, "")
        check_ranges(obj)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    return obj


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file is ``{}``); unreadable or not a mapping is a ConfigError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] = (), seed: int | None = None) -> dict[str, Any]:
    """``data`` with command-line overrides applied (a new mapping): each ``KEY=VALUE`` sets a key, nested keys
    joined by dots (``grpo.max_steps=300``), the value read as YAML (``true``, ``0.5``, ``[0, 1]``, text);
    ``seed`` is ``seed=N``. The result is validated by :func:`from_dict` like the file itself, so an unknown
    key or a value out of range fails naming it."""
    out = copy.deepcopy(data)
    settings = [*overrides, *([f"seed={seed}"] if seed is not None else [])]
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (nested keys with dots, e.g. grpo.max_steps=300)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        parts = key.strip().split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_yaml(cls: type[T], path: str | Path | None, overrides: Sequence[str] = (), seed: int | None = None) -> T:
    """Load a YAML file (``None``: the defaults) onto ``cls`` (keys map 1:1 onto fields), with command-line
    overrides (:func:`apply_overrides`)."""
    data = read_yaml_mapping(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides or seed is not None:
        data = apply_overrides(data, overrides, seed)
        source += " with --set/--seed"
    return from_dict(cls, data, source)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain mapping (YAML/JSON-ready) of a config dataclass."""
    return dataclasses.asdict(obj)
