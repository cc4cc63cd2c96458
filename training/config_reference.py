"""The config reference page, docs/config.md, written from the config dataclasses themselves.

Every YAML file layerloop reads maps 1:1 onto a dataclass whose fields carry a docstring and, for numbers,
an allowed range (:func:`sim_bridge.config.ranged`). This module renders each of them — key, type, default,
range, docstring — so the page cannot drift from the code: ``python -m training.config_reference --check``
(run by the tests) fails when the committed page differs from what the code says.

``python -m training.config_reference [--out docs/config.md] [--check]``
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from envs.jobs import PrintJob
from envs.randomization import RandomizationConfig
from safety.policy import SafetyPolicy
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile
from training.grpo import GRPOSettings
from training.loop_config import LOOP_OWNED, SimLoopConfig
from training.make_dataset import DatasetConfig
from training.sft import SFTConfig

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"

CONFIGS: tuple[tuple[type, str], ...] = (
    (SimLoopConfig, "`python -m training.sim_loop --config FILE` (configs/tiny-cpu.yaml, configs/gpu.yaml, …)"),
    (SFTConfig, "`python -m training.sft --config FILE` (configs/sft-tiny.yaml) and the loop's `sft:` section"),
    (GRPOSettings, "`python -m training.grpo --config FILE` (configs/grpo-tiny.yaml) and the loop's `grpo:` "
                   "section"),
    (DatasetConfig, "`python -m training.make_dataset --config FILE` (configs/dataset-tiny.yaml)"),
    (RandomizationConfig, "configs/randomization.yaml: the ranges of domain randomisation (datasets, "
                          "`grpo.randomize`, `:randomized` suites)"),
    (PrinterProfile, "a printer profile: sim_bridge/profiles/*.yaml, or any `--printer FILE.yaml`"),
    (SimOptions, "`python -m sim_bridge simulate --options FILE`"),
    (SafetyPolicy, "the validator's policy: `python -m safety check --policy FILE`, `python -m safety.deploy --policy FILE`"),
    (PrintJob, "one job of a suite (envs/suites/*.json, JSON with the same keys)"),
)
"""Each config a user writes, with the command or file that reads it."""


def field_docstrings(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string after each field), read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    """A type as one writes it: ``int``, ``list[str]``, ``str | None``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def default_text(f: dataclasses.Field[Any]) -> str:
    """A field's default as YAML would spell it."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "its section's defaults"
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return repr(value)


def range_text(metadata: Any) -> str:
    """The allowed values from :func:`sim_bridge.config.ranged`'s metadata: ``1 … 10``, ``≥ 0``, ``one of …``."""
    if metadata.get("choices"):
        return "one of: " + ", ".join(f"`{c}`" for c in metadata["choices"])
    lo, hi = metadata.get("min"), metadata.get("max")
    if lo is not None and hi is not None:
        return f"{lo:g} … {hi:g}"
    if lo is not None:
        return f"≥ {lo:g}"
    if hi is not None:
        return f"≤ {hi:g}"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def nested_types(cls: type) -> list[type]:
    """The dataclasses ``cls`` holds as sections, depth first, each once."""
    found: list[type] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for tp in _dataclasses_in(hints[f.name]):
            if tp not in found:
                found += [tp, *[t for t in nested_types(tp) if t not in found and t is not tp]]
    return found


def _dataclasses_in(tp: Any) -> list[type]:
    """The dataclasses a field's type names: itself, or inside ``list[...]``, ``X | None``, ``dict[...]``."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return [tp]
    return [t for arg in typing.get_args(tp) for t in _dataclasses_in(arg)]


def table(cls: type) -> list[str]:
    """One Markdown table of ``cls``'s keys."""
    hints, docs = typing.get_type_hints(cls), field_docstrings(cls)
    rows = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = _dataclasses_in(tp)
        shown = f"`{_cell(type_name(tp))}`" + "".join(f" ([{t.__name__}](#{t.__name__.lower()}))" for t in inner)
        rows.append(f"| `{f.name}` | {shown} | `{_cell(default_text(f))}` | {_cell(range_text(f.metadata))} | "
                    f"{_cell(docs.get(f.name, ''))} |")
    return rows


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def render() -> str:
    """The whole page."""
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m training.config_reference` from the config dataclasses; do not edit by "
        "hand: a test checks this page is current. -->",
        "",
        "Every YAML file layerloop reads maps 1:1 onto one of the dataclasses below: each key is a field, a "
        "nested mapping is a section (its own table), and an unknown key, a value of the wrong type or one "
        "outside its range fails before any work, naming the file, the key, the value and what is allowed. "
        "The trainers' command lines take overrides over the YAML: `--set KEY=VALUE` (repeatable, nested keys "
        "with dots: `--set grpo.max_steps=120`) and `--seed N`. Each setting has one definition: the loop's "
        "`sft:` and `grpo:` sections are the standalone trainers' own classes.",
        "",
    ]
    for cls, reader in CONFIGS:
        lines += [f"- [`{cls.__name__}`](#{cls.__name__.lower()}): {reader}"]
    lines.append("")
    done: set[type] = set()
    for cls, reader in CONFIGS:
        for each in [cls, *nested_types(cls)]:
            if each in done:
                continue
            done.add(each)
            lines += [f"## {each.__name__}", "", f"`{each.__module__}.{each.__qualname__}`: {_summary(each)}", ""]
            if each is cls:
                lines += [f"Read by {reader}.", ""]
            if each is SimLoopConfig:
                for section, owned in LOOP_OWNED.items():
                    lines += [f"In the `{section}:` section the loop sets "
                              + ", ".join(f"`{k}`" for k in owned) + " itself (from the top-level keys and the "
                              "run directory); the section leaves them out.", ""]
            lines += [*table(each), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.config_reference", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=PAGE, help="where to write the page (default docs/config.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is not what the code says")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != page:
            print(f"{args.out}: out of date with the config dataclasses; run python -m training.config_reference",
                  file=sys.stderr)
            return 1
        print(f"{args.out}: current")
        return 0
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({len(CONFIGS)} configs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
