"""docs/config.md is what the config dataclasses say, and every config a user writes is on it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sim_bridge.config import ranged
from training import config_reference as cr

ROOT = Path(__file__).resolve().parents[1]
LOADERS = re.compile(r"(?<![.\w])(?<!def )(?:load_yaml|from_dict)\((\w+)|config_main\(.*?,\s*(\w+),\s*train\)", re.S)
NOT_USER_CONFIGS = {"cls", "config_type"}
"""Names a loader is called with that are no config type (the generic loaders' own parameters)."""


def _documented() -> set[type]:
    return {each for cls, _ in cr.CONFIGS for each in [cls, *cr.nested_types(cls)]}


def test_the_committed_page_is_current() -> None:
    assert cr.PAGE.read_text(encoding="utf-8") == cr.render(), (
        "docs/config.md is out of date with the config dataclasses: run python -m training.config_reference")
    assert cr.main(["--check"]) == 0


def test_check_fails_on_a_stale_page(tmp_path: Path, capsys) -> None:
    stale = tmp_path / "config.md"
    stale.write_text("# an old page\n")
    assert cr.main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_every_field_of_every_config_has_a_docstring() -> None:
    missing = [f"{each.__name__}.{f.name}" for each in _documented() for f in dataclasses.fields(each)
               if not cr.field_docstrings(each).get(f.name)]
    assert not missing, f"fields without a docstring: {missing}"


def test_every_config_the_code_loads_is_documented() -> None:
    loaded = set()
    for path in [*ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py")]:
        if path.parts[len(ROOT.parts)] in {"training", "agent", "envs", "safety", "sim_bridge"}:
            loaded |= {a or b for a, b in LOADERS.findall(path.read_text(encoding="utf-8"))}
    names = {t.__name__ for t in _documented()}
    assert loaded - NOT_USER_CONFIGS - names == set(), "configs loaded from YAML but missing from docs/config.md"
    assert {"SimLoopConfig", "SFTConfig", "GRPOSettings", "DatasetConfig", "PrinterProfile"} <= loaded


@dataclasses.dataclass
class _Example:
    steps: int = ranged(10, 1, 100)
    """How many steps."""
    rate: float = ranged(0.5, 0.0)
    """A rate, at least 0."""
    mode: str = ranged("a", choices=("a", "b"))
    """Which mode."""
    tags: list[str] | None = None
    """Optional tags."""


def test_a_table_shows_type_default_range_and_docstring() -> None:
    rows = cr.table(_Example)
    assert rows[2] == "| `steps` | `int` | `10` | 1 … 100 | How many steps. |"
    assert rows[3] == "| `rate` | `float` | `0.5` | ≥ 0 | A rate, at least 0. |"
    assert rows[4] == "| `mode` | `str` | `\"a\"` | one of: `a`, `b` | Which mode. |"
    assert rows[5] == "| `tags` | `list[str] \\| None` | `null` |  | Optional tags. |"
