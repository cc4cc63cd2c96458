"""Every config class checks itself: built from YAML or in Python, a value out of range fails at once, naming
the key, the value and the range; an unknown key fails with a hint. And every bundled config loads.

The config classes are found, not listed: every dataclass in the project with a ranged field
(:func:`sim_bridge.config.ranged`) and a default for every field.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any

import pytest

from sim_bridge.config import ConfigError, from_dict

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sim_bridge", "envs", "agent", "training", "safety")


def _config_classes() -> list[type]:
    found: dict[str, type] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            module = importlib.import_module(".".join(parts))
            for obj in vars(module).values():
                if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                        and any(_is_ranged(f) for f in dataclasses.fields(obj))
                        and all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                                for f in dataclasses.fields(obj) if f.init)):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def _is_ranged(f: dataclasses.Field) -> bool:
    return any(f.metadata.get(k) is not None for k in ("min", "max", "choices"))


CLASSES = _config_classes()


def _bad_value(f: dataclasses.Field, current: Any) -> Any:
    """A value just outside the field's range (or not among its choices), of the field's own shape."""
    lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
    if choices is not None:
        return "not-a-choice"
    bad = (hi + max(1.0, abs(hi))) if hi is not None else (lo - max(1.0, abs(lo)))
    if isinstance(current, int) and not isinstance(current, bool) and not math.isinf(bad):
        bad = int(math.floor(bad)) if hi is None else int(math.ceil(bad))
    if isinstance(current, list | tuple):
        return type(current)([bad] * max(1, len(current)))
    return bad


def test_config_classes_are_found() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"SimOptions", "DatasetConfig"} <= names, sorted(names)
    assert len(CLASSES) >= 10, sorted(names)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_defaults_are_valid(cls: type) -> None:
    cls()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_out_of_range_fails_when_built_in_python(cls: type) -> None:
    default = cls()
    for f in dataclasses.fields(cls):
        if not f.init or not _is_ranged(f):
            continue
        current = getattr(default, f.name)
        if current is None and f.metadata.get("choices") is None:
            continue
        bad = _bad_value(f, current if current is not None else 0.0)
        with pytest.raises(ConfigError, match=f.name):
            cls(**{f.name: bad})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_unknown_key_fails_with_a_hint(cls: type) -> None:
    name = next(f.name for f in dataclasses.fields(cls) if f.init)
    with pytest.raises(ConfigError, match=f"did you mean '{name}'"):
        from_dict(cls, {name + "x": 1})


BUNDLED = sorted((ROOT / "configs").glob("*.yaml"))


def _loader(path: Path) -> Any:
    """How the command that takes ``path`` loads it."""
    from envs.randomization import RandomizationConfig
    from sim_bridge.config import load_yaml
    from sim_bridge.options import SimOptions
    from training.grpo import GRPOSettings
    from training.loop_config import load_config
    from training.make_dataset import DatasetConfig
    from training.sft import SFTConfig

    by_name = {"dataset-tiny": DatasetConfig, "grpo-tiny": GRPOSettings, "sft-tiny": SFTConfig,
               "randomization": RandomizationConfig, "sim-default": SimOptions}
    cls = by_name.get(path.stem)
    return load_yaml(cls, path) if cls is not None else load_config(path)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_every_bundled_config_loads(path: Path) -> None:
    assert len(BUNDLED) >= 10
    assert dataclasses.is_dataclass(_loader(path))
