"""docs/config.md is what the config dataclasses say, and every config a user writes is on it.

The page is :func:`training.config_reference.render`'s; these tests keep the committed copy current, every
documented field described, and every config type the code loads from YAML (found by reading the source,
not listed here) documented, so a new config type fails until it is on the page.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from sim_bridge.config import load_yaml, ranged
from training import config_reference as cr
from training.loop_config import SimLoopConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "config.md"
REGENERATE = "python -m training.config_reference"
PACKAGES = ("training", "agent", "envs", "safety", "sim_bridge")
LOADERS = {"load_yaml": ("cls", 0), "from_dict": ("cls", 0), "config_main": ("config_type", 3)}
"""Functions that build a config from a file's mapping: the argument naming the type (keyword, position)."""


def test_the_committed_page_is_current() -> None:
    assert PAGE.is_file(), f"docs/config.md is missing: run `{REGENERATE}`"
    assert PAGE.read_text(encoding="utf-8") == cr.render(), (
        f"docs/config.md is out of date with the config dataclasses: run `{REGENERATE}` and commit the page")


def test_the_page_is_deterministic() -> None:
    page = cr.render()
    assert page == cr.render()
    for leak in (str(ROOT), " object at 0x", "<function", "<lambda>"):
        assert leak not in page, f"the page shows {leak!r}: it must not depend on the machine or the run"


def test_check_names_the_file_and_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "config.md"
    assert cr.main(["--check", "--out", str(stale)]) == 1
    assert "missing" in capsys.readouterr().err
    stale.write_text("# an old page\n", encoding="utf-8")
    assert cr.main(["--check", "--out", str(stale)]) == 1
    err = capsys.readouterr().err
    assert "config.md: out of date" in err and f"run `{REGENERATE}` --out" in err
    assert cr.main(["--out", str(stale)]) == 0
    assert cr.main(["--check", "--out", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == cr.render()


@pytest.mark.parametrize("cls", cr.documented_classes(), ids=lambda c: c.__name__)
def test_every_documented_field_has_a_docstring(cls: type) -> None:
    assert cr.class_summary(cls), f"{cls.__module__}.{cls.__qualname__}: no class docstring"
    missing = [name for name, doc in cr.field_docs(cls).items() if not doc]
    assert not missing, (f"{cls.__module__}.{cls.__qualname__}: fields without a docstring (a string on the "
                         f"line after the field, with units): {missing}")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _names_in_scope(tree: ast.Module, module: str) -> dict[str, str]:
    """Module-level names that can be a class: ``name → module.name`` for imports and class definitions."""
    scope: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            scope.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.ClassDef):
            scope[node.name] = f"{module}.{node.name}"
    return scope


def _type_argument(call: ast.Call) -> ast.expr | None:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name not in LOADERS:
        return None
    keyword, position = LOADERS[name]
    given = [k.value for k in call.keywords if k.arg == keyword]
    return given[0] if given else call.args[position] if len(call.args) > position else None


def _loaded_types() -> dict[type, list[str]]:
    """Every class the project's code hands to a config loader, with where."""
    found: dict[type, list[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            scope = _names_in_scope(tree, module)
            for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
                arg = _type_argument(call)
                # A loader's own parameter (``cls``, ``config_type``) names no class: not a config type.
                if not isinstance(arg, ast.Name) or arg.id not in scope:
                    continue
                home, _, name = scope[arg.id].rpartition(".")
                obj = getattr(importlib.import_module(home), name, None)
                if isinstance(obj, type) and dataclasses.is_dataclass(obj):
                    found.setdefault(obj, []).append(f"{path.relative_to(ROOT)}:{call.lineno}")
    return found


def test_every_config_the_code_loads_is_documented() -> None:
    loaded = _loaded_types()
    # A scan that finds nothing would pass: it must at least see the trainers' and the simulator's configs.
    assert {"SimLoopConfig", "SFTConfig", "GRPOSettings", "DatasetConfig", "PrinterProfile", "SimOptions",
            "SafetyPolicy", "RandomizationConfig"} <= {c.__name__ for c in loaded}, sorted(c.__name__ for c in loaded)
    documented = {entry.cls for entry in cr.DOCUMENTED}
    missing = {f"{c.__module__}.{c.__qualname__}": where for c, where in loaded.items() if c not in documented}
    assert not missing, (f"config types loaded from a file but not on docs/config.md: {missing}; add each to "
                         f"training.config_reference.DOCUMENTED and run `{REGENERATE}`")


def test_every_bundled_config_file_is_on_the_page() -> None:
    owners: dict[str, list[type]] = {}
    for entry in cr.DOCUMENTED:
        for pattern in entry.files:
            matches = sorted(ROOT.glob(pattern))
            assert matches, f"{entry.cls.__name__}: no file matches {pattern}"
            for path in matches:
                owners.setdefault(path.relative_to(ROOT).as_posix(), []).append(entry.cls)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        name = path.relative_to(ROOT).as_posix()
        assert len(owners.get(name, [])) == 1, (f"{name}: listed under {owners.get(name, [])} in "
                                                "training.config_reference.DOCUMENTED (want exactly one type)")
        cls = owners[name][0]
        loaded = load_config(path) if cls is SimLoopConfig else load_yaml(cls, path)
        assert isinstance(loaded, cls)


@dataclasses.dataclass
class _Inner:
    """A nested section."""

    depth: float = ranged(1.5, 0.0, 10.0)
    """Depth (mm)."""


@dataclasses.dataclass
class _Example:
    """A config for the test."""

    steps: int = ranged(10, 1, 10000)
    """How many
    steps."""
    rate: float = ranged(0.5, 0.0)
    """A rate, at least 0 (a | b)."""
    cap: float | None = ranged(None, None, 5.0)
    """A cap (``None``: no cap)."""
    mode: str = ranged("a", choices=("", "a", "b"))
    """Which mode."""
    levels: list[int] = ranged([0, 2], 0, 4)
    """Levels."""
    tags: list[str] = dataclasses.field(default_factory=lambda: ["x"])
    """Tags."""
    big: float = ranged(3e12, 1.0, 1e20)
    """A large number."""
    tiny: float = ranged(2**31 - 1, 1e-9, 2**31 - 1)
    """Bounds that :func:`format` with ``g`` would round."""
    inner: _Inner = dataclasses.field(default_factory=lambda: _Inner(depth=2.0))
    """The section."""


def test_ranges_defaults_and_docstrings_are_rendered() -> None:
    fields = {f.name: f for f in dataclasses.fields(_Example)}
    hints = {"levels": list[int]}
    shown = {name: cr.allowed(f, hints.get(name)) for name, f in fields.items()}
    assert shown == {"steps": "1 … 10000", "rate": "≥ 0", "cap": "≤ 5", "mode": 'one of: `""`, `a`, `b`',
                     "levels": "each 0 … 4", "tags": cr.NO_RANGE, "big": "1 … 1e+20",
                     "tiny": "1e-09 … 2147483647", "inner": cr.NO_RANGE}
    rows = cr.table(_Example)
    assert rows[:2] == ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    assert rows[2] == "| `steps` | `int` | `10` | 1 … 10000 | How many steps. |"
    assert rows[3] == "| `rate` | `float` | `0.5` | ≥ 0 | A rate, at least 0 (a \\| b). |"
    assert rows[4] == "| `cap` | `float \\| None` | `null` | ≤ 5 | A cap (`None`: no cap). |"
    assert rows[5] == '| `mode` | `str` | `"a"` | one of: `""`, `a`, `b` | Which mode. |'
    assert rows[6] == "| `levels` | `list[int]` | `[0, 2]` | each 0 … 4 | Levels. |"
    assert rows[7] == '| `tags` | `list[str]` | `["x"]` | — | Tags. |'
    assert rows[8] == "| `big` | `float` | `3e+12` | 1 … 1e+20 | A large number. |"
    assert rows[9] == "| `tiny` | `float` | `2147483647` | 1e-09 … 2147483647 | Bounds that `format` with `g` would round. |"
    assert rows[10] == "| `inner` | `_Inner` | section below | — | The section. |"
    # The section's defaults are the parent's default for it (depth=2.0), not the class's own (1.5).
    assert "### `inner` section: `_Inner`" in rows
    assert "| `inner.depth` | `float` | `2.0` | 0 … 10 | Depth (mm). |" in rows
