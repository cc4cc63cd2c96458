"""The config reference page (``docs/config.md``), generated from the config dataclasses' field docstrings.

``python -m training.config_reference [--out docs/config.md] [--check]`` writes the page, or with ``--check``
exits 1 when the committed page differs from :func:`render` (the test suite runs the same check). Every
config a user writes as YAML (and the suites' JSON print job) is one entry of :data:`DOCUMENTED`, with who
reads it and which files are of it. Field docstrings (the string on the lines after a field) are not kept
at runtime, so they are read from the class's source with :mod:`ast`; types, defaults (``default_factory``
evaluated) and ranges (:func:`sim_bridge.config.ranged`'s metadata) come from the classes themselves.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.jobs import PrintJob
from envs.randomization import RandomizationConfig
from safety.policy import SafetyPolicy
from sim_bridge.config import ConfigError, apply_overrides, from_dict
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile
from training.grpo import GRPOSettings
from training.loop_config import LOOP_OWNED, SimLoopConfig
from training.make_dataset import DatasetConfig
from training.sft import SFTConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "config.md"
GENERATOR = "python -m training.config_reference"
NO_RANGE = "—"


@dataclass(frozen=True)
class Documented:
    """One config type on the page: what it is and who reads it."""

    cls: type
    """The config dataclass (the YAML file's top level)."""
    title: str
    """Heading, for people."""
    read_by: tuple[str, ...]
    """Commands and code that read it (Markdown)."""
    files: tuple[str, ...] = ()
    """Files of this type in the repository: glob patterns relative to its root."""
    overrides: bool = False
    """Whether its commands take ``--set KEY=VALUE`` and ``--seed N`` (:func:`training.cli.add_override_arguments`)."""
    loop_owned: frozenset[str] = frozenset()
    """Dotted keys the loop sets itself: listed, but marked as not for the user."""


DOCUMENTED: tuple[Documented, ...] = (
    Documented(SimLoopConfig, "The closed loop", (
        "`python -m training.sim_loop --config FILE` (no `--config`: the defaults; `make run`: "
        "`configs/tiny-cpu.yaml`)",
        "`python -m training.sim_loop --resume RUN_DIR` reads `RUN_DIR/config.yaml`, which the loop wrote"),
        ("configs/gpu.yaml", "configs/smoke.yaml", "configs/smoke-multiturn.yaml", "configs/smoke-supervisor.yaml",
         "configs/supervisor-tiny.yaml", "configs/tiny-cpu.yaml", "configs/tiny-cpu-multiturn.yaml"),
        overrides=True,
        loop_owned=frozenset(f"{section}.{key}" for section, keys in LOOP_OWNED.items() for key in keys)),
    Documented(SFTConfig, "Supervised fine-tuning on its own", (
        "`python -m training.sft --config FILE`",
        "the closed loop's `sft:` section (less the keys the loop sets)"), ("configs/sft-tiny.yaml",), overrides=True),
    Documented(GRPOSettings, "GRPO on its own", (
        "`python -m training.grpo --config FILE`",
        "the closed loop's `grpo:` section (less the keys the loop sets)"), ("configs/grpo-tiny.yaml",),
        overrides=True),
    Documented(DatasetConfig, "Dataset generation", (
        "`python -m training.make_dataset --config FILE --out DIR` (no `--config`: the defaults)",),
        ("configs/dataset-tiny.yaml",), overrides=True),
    Documented(RandomizationConfig, "Randomisation ranges", (
        "`envs.randomization.load_randomization()` (the bundled `configs/randomization.yaml`): "
        "`PrintSupervisor-v1` episodes, the wrappers of `envs/wrappers.py`, the GRPO reward with "
        "`randomize: true` and randomised evaluations (`eval_randomized`, `--suite NAME:randomized`)",
        "`python -m training.make_dataset`: the file its `randomization:` key names (`kind: adaptation`)"),
        ("configs/randomization.yaml",)),
    Documented(SafetyPolicy, "Safety policy", (
        "`python -m safety check FILE.gcode --printer P --policy POLICY.yaml`",
        "`python -m safety.deploy PROGRAM ... --policy POLICY.yaml`")),
    Documented(PrinterProfile, "Printer profile", (
        "`--printer NAME` (a bundled profile) or `--printer FILE.yaml` of `python -m sim_bridge simulate`, "
        "`python -m sim_bridge virtual-printer`, `python -m safety check` and `python -m safety.deploy` "
        "(`sim_bridge.printers.load_printer`)",
        "a Prunt config (`.json`) is read onto the bundled `prunt-sim` profile"), ("sim_bridge/profiles/*.yaml",)),
    Documented(SimOptions, "Simulator options", (
        "`python -m sim_bridge simulate FILE.gcode --options OPTIONS.yaml`",), ("configs/sim-default.yaml",)),
    Documented(PrintJob, "Print job (JSON, same keys)", (
        "the held-out suites, `envs/suites/NAME.json` (`{\"jobs\": [JOB, ...]}`: `envs.sampler.load_suite`, "
        "`--suite NAME` of `python -m training.evaluate` and `python -m envs rollout`)",
        "`PrintJob.from_dict` / `from_json`: the job column of datasets, the environments' `job=` argument"),
        ("envs/suites/*.json",)),
)
"""Every config type a user writes as YAML (and the JSON print job), in the page's order."""


# -- reading the classes -------------------------------------------------------------------------------------------
@functools.cache
def _module_tree(module: str) -> ast.Module:
    source = inspect.getsource(sys.modules[module])
    return ast.parse(source)


def _class_node(cls: type) -> ast.ClassDef:
    node: ast.AST = _module_tree(cls.__module__)
    for name in cls.__qualname__.split("."):
        node = next(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.ClassDef) and n.name == name)
    assert isinstance(node, ast.ClassDef)
    return node


def clean(text: str) -> str:
    """A docstring as one line of Markdown: whitespace collapsed, reST literals and roles as code spans."""
    text = re.sub(r"\s+", " ", inspect.cleandoc(text)).strip()
    text = text.replace("``", "`")
    # Sphinx shows a `~`-prefixed target by its last component only.
    return re.sub(r":[a-z]+:`(~?)([^`]+)`", lambda m: f"`{m[2].split('.')[-1] if m[1] else m[2]}`", text)


def class_summary(cls: type) -> str:
    """The first paragraph of the class docstring (from the source: a dataclass without one gets its
    signature as ``__doc__``)."""
    doc = ast.get_docstring(_class_node(cls)) or ""
    return clean(doc.split("\n\n")[0]) if doc.strip() else ""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (empty where it has none), base classes' fields included."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = _class_node(klass).body
        for stmt, after in zip(body, [*body[1:], None], strict=True):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                literal = (after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                           and isinstance(after.value.value, str) else "")
                docs[stmt.target.id] = clean(literal) if literal.strip() else ""
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls) if f.init}


def yaml_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a YAML mapping may set (:func:`sim_bridge.config.from_dict` builds only ``init`` ones)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def nested_config(tp: Any) -> tuple[type, bool] | None:
    """``(dataclass, is_list)`` when a field of type ``tp`` is a nested section (or a list of them)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return nested_config(inner[0]) if len(inner) == 1 else None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp, False
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        if len(args) == 1 and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
            return args[0], True
    return None


def documented_classes() -> list[type]:
    """Every dataclass on the page: the documented types and the sections nested in them."""
    found: dict[type, None] = {}

    def visit(cls: type) -> None:
        if cls in found:
            return
        found[cls] = None
        hints = typing.get_type_hints(cls)
        for f in yaml_fields(cls):
            nested = nested_config(hints[f.name])
            if nested:
                visit(nested[0])

    for entry in DOCUMENTED:
        visit(entry.cls)
    return list(found)


# -- formatting ----------------------------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    """A readable annotation: ``int``, ``list[str]``, ``float | None``, ``ModelConfig``."""
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def yaml_value(value: Any) -> str:
    """A default as a user would write it in YAML (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and abs(value) >= 1e6:
        return number(value)  # 3e+12, not 3000000000000.0; a float field reads either
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, os.PathLike):
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return yaml_value(dataclasses.asdict(value))
    return repr(value)


def number(value: float) -> str:
    """A range bound, short: ``10000``, ``0.5``, ``1e-09``, ``1e+12``."""
    if isinstance(value, int):
        return str(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def allowed(f: dataclasses.Field, tp: Any = None) -> str:
    """A field's allowed values from its :func:`~sim_bridge.config.ranged` metadata: ``1 … 10000``, ``≥ 0``,
    ``≤ 5``, ``one of: `a`, `b```; each item's range for a list; :data:`NO_RANGE` without one."""
    lo, hi, choices = (f.metadata.get(k) for k in ("min", "max", "choices"))
    parts = []
    if choices is not None:
        parts.append("one of: " + ", ".join(f"`{yaml_value(c) if c == '' else c}`" for c in choices))
    if lo is not None and hi is not None:
        parts.append(f"{number(lo)} … {number(hi)}")
    elif lo is not None:
        parts.append(f"≥ {number(lo)}")
    elif hi is not None:
        parts.append(f"≤ {number(hi)}")
    if not parts:
        return NO_RANGE
    each = typing.get_origin(tp) in (list, tuple) and choices is None
    return ("each " if each else "") + "; ".join(parts)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\|", "|").replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    return f"`{text}`"


# -- the page ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One table: the fields of ``cls`` at ``prefix`` (``""``, ``sft.``, ``macros[].``)."""

    cls: type
    prefix: str
    defaults: Any
    """An instance holding this section's defaults (the parent's default for it), or None."""
    doc: str = ""
    """What the parent's field says about the section."""


def _field_default(f: dataclasses.Field, defaults: Any) -> Any:
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _rows(section: Section, loop_owned: frozenset[str], top_keys: set[str]) -> Iterator[list[str] | Section]:
    """The section's table rows, and after them the sections nested in it."""
    hints = typing.get_type_hints(section.cls)
    docs = field_docs(section.cls)
    nested_sections: list[Section] = []
    for f in yaml_fields(section.cls):
        key, tp = section.prefix + f.name, hints[f.name]
        if key in loop_owned:
            source = f" from the top-level `{f.name}`" if f.name in top_keys else ""
            yield [code(key), code(type_name(tp)), "*set by the loop*", NO_RANGE,
                   f"Set by the loop{source}; leave it out of this section. {docs[f.name]}".strip()]
            continue
        default = _field_default(f, section.defaults)
        nested = nested_config(tp)
        if nested and not nested[1]:
            yield [code(key), code(type_name(tp)), "section below", NO_RANGE, docs[f.name]]
            inner = default if dataclasses.is_dataclass(default) else None
            nested_sections.append(Section(nested[0], key + ".", inner, docs[f.name]))
            continue
        shown = "required" if default is dataclasses.MISSING else code(yaml_value(default))
        yield [code(key), code(type_name(tp)), shown, allowed(f, tp), docs[f.name]]
        if nested:
            nested_sections.append(Section(nested[0], key + "[].", None, docs[f.name]))
    yield from nested_sections


def _table(section: Section, loop_owned: frozenset[str], top_keys: set[str], depth: int) -> list[str]:
    lines: list[str] = []
    if section.prefix:
        where = section.prefix.rstrip(".")
        what = "each item" if where.endswith("[]") else "section"
        lines += [f"{'#' * depth} `{where}` {what}: `{section.cls.__name__}`", ""]
        lines += [p for doc in (section.doc, class_summary(section.cls)) if doc for p in (doc, "")]
    lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    later: list[Section] = []
    for row in _rows(section, loop_owned, top_keys):
        if isinstance(row, Section):
            later.append(row)
        else:
            lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    lines.append("")
    for sub in later:
        lines += _table(sub, loop_owned, top_keys, min(depth + 1, 6))
    return lines


def table(cls: type) -> list[str]:
    """The Markdown table of ``cls`` (and those of its nested sections), as on the page."""
    return _table(Section(cls, "", None), frozenset(), set(), 2)


def _files(patterns: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern))
        found += matches or [pattern]
    return found


def _example_errors() -> list[str]:
    """Real messages of the loaders, so the page shows what a user will see."""
    cases: tuple[tuple[type, dict[str, Any], tuple[str, ...], str], ...] = (
        (SFTConfig, {"batch_size": 0}, (), "configs/sft-tiny.yaml"),
        (SFTConfig, {"batch_sise": 4}, (), "configs/sft-tiny.yaml"),
        (SimLoopConfig, {}, ("grpo.max_steps=-1",), "configs/tiny-cpu.yaml with --set/--seed"),
        (SimLoopConfig, {"task": "GcodeWriter"}, (), "configs/tiny-cpu.yaml"),
        (SimLoopConfig, {"sft": {"seed": 1}}, (), "configs/tiny-cpu.yaml"),
    )
    messages = []
    for cls, data, overrides, source in cases:
        try:
            from_dict(cls, apply_overrides(data, overrides), source)
        except ConfigError as exc:
            messages.append(str(exc))
        else:
            raise AssertionError(f"{cls.__name__} accepted {data} {overrides}: pick an example that fails")
    return messages


INTRO = """\
# Config reference

<!-- Generated by `{generator}`: do not edit by hand. Change a field's docstring, default or range in the
source, run `{generator}` and commit the page; tests/test_config_reference.py fails while it is stale. -->

This page is generated by `{generator}` from the config dataclasses themselves (their field docstrings,
types, defaults and ranges): do not edit it by hand.

Every config is a dataclass, and a YAML file maps onto it 1:1 (`sim_bridge.config.from_dict`): each key
is a field, a nested section is a mapping (`sft:`, `hotend:`), a list is `[a, b]` or a block list, `null`
is None, and `1e-4` is read as a number. A key left out keeps the default shown here. The commands that
take `--config FILE` (`training.sim_loop`, `training.sft`, `training.grpo`, `training.make_dataset`) also
take `--set KEY=VALUE` (repeatable; nested keys joined by dots, `--set grpo.max_steps=300`; the value read
as YAML) and `--seed N` (the same as `--set seed=N`), applied over the file
(`sim_bridge.config.apply_overrides`) and checked like it.

A bad value fails when the file is loaded, before anything runs, naming the file, the key, the value and
the allowed range (or the choices); an unknown key fails with a hint. For example:

{errors}

The *allowed* column is the closed range a value must lie in (for a list: each item), or its choices.
Rules across keys (GRPO's `batch_size` a multiple of `num_generations`, say) live in each class's
`__post_init__`, and their messages name the keys. In the closed loop's `sft:` and `grpo:` sections, keys
marked *set by the loop* are filled in by the loop and must be left out.

## Contents
"""
"""The top of the page (``str.format``: ``generator``, ``errors``)."""


def _intro() -> list[str]:
    errors = "\n".join(f"    {m}" for m in _example_errors())
    lines = INTRO.format(generator=GENERATOR, errors=errors).splitlines()
    lines.append("")
    lines += [f"- [{e.title}](#{e.cls.__name__.lower()}): `{e.cls.__module__}.{e.cls.__qualname__}`"
              for e in DOCUMENTED]
    return [*lines, ""]


def render_entry(entry: Documented) -> list[str]:
    """One config type's part of the page."""
    cls = entry.cls
    lines = [f'<a id="{cls.__name__.lower()}"></a>', "", f"## {entry.title}: `{cls.__name__}`", ""]
    summary = class_summary(cls)
    if summary:
        lines += [summary, ""]
    lines.append(f"- Class: `{cls.__module__}.{cls.__qualname__}`")
    if len(entry.read_by) == 1:
        lines.append(f"- Read by: {entry.read_by[0]}")
    else:
        lines += ["- Read by:", *(f"  - {who}" for who in entry.read_by)]
    files = _files(entry.files)
    if files:
        lines.append("- Files: " + ", ".join(code(f) for f in files))
    lines.append("- Overrides: " + ("`--set KEY=VALUE`, `--seed N`" if entry.overrides else "none (edit the file)"))
    lines.append("")
    top_keys = {f.name for f in yaml_fields(cls)}
    lines += _table(Section(cls, "", None), entry.loop_owned, top_keys, 2)
    return lines


def render() -> str:
    """The whole page (Markdown), deterministic: no times, no absolute paths, no addresses."""
    lines = _intro()
    for entry in DOCUMENTED:
        lines += render_entry(entry)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- command line --------------------------------------------------------------------------------------------------
def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def check(path: Path, expected: str) -> str | None:
    """Why ``path`` is not the current page (None when it is)."""
    fix = f"run `{GENERATOR}`" + ("" if path.resolve() == DEFAULT_OUT else f" --out {_shown(path)}") + " and commit it"
    if not path.is_file():
        return f"{_shown(path)}: missing; {fix}"
    actual = path.read_text(encoding="utf-8")
    if actual == expected:
        return None
    diff = list(difflib.unified_diff(actual.splitlines(), expected.splitlines(), "committed", "generated",
                                     lineterm="", n=1))
    shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
    return (f"{_shown(path)}: out of date with the config dataclasses (their docstrings, defaults or ranges "
            f"changed); {fix}.\n{shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the page (default: docs/config.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is not current; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        problem = check(args.out, text)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        print(f"{_shown(args.out)}: current")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {_shown(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
