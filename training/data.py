"""Load layerloop datasets as Hugging Face ``datasets``; check and show them from the command line.

``python -m training.data verify DIR`` (exit 0 when intact, 1 naming the first problem) and
``python -m training.data show DIR`` (the card, the counts and a sample record).

Splits are made by part: a record's split is a fixed function of its ``part_id`` (80 / 10 / 10), so no part
— and no job, since a job has one part — appears in two splits, whichever dataset or shard holds it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import datasets

from training import datafmt

SPLITS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


def split_of(part_id: str) -> str:
    """The split a part belongs to (stable across datasets and code versions).

    >>> split_of("0123456789abcdef") in SPLITS
    True
    """
    bucket = int(hashlib.sha256(part_id.encode()).hexdigest()[:8], 16) / 2**32
    for name, (lo, hi) in SPLITS.items():
        if lo <= bucket < hi:
            return name
    return "test"


def load_table(root: str | Path, table: str = "sft", split: str | None = None, streaming: bool = False,
               verify_hashes: bool = True) -> datasets.Dataset | datasets.IterableDataset:
    """One table of a dataset folder as a ``datasets.Dataset`` (``IterableDataset`` when streaming).

    The manifest is checked first: a missing shard, a hash mismatch or an unknown schema version raises
    :class:`~training.datafmt.DatasetError` naming the problem. ``split`` keeps the records of one split.
    """
    root = Path(root)
    problems = datafmt.verify(root, hashes=verify_hashes)
    if problems:
        raise datafmt.DatasetError(f"{root}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    files = [str(p) for p in datafmt.table_paths(root, table)]
    features = datasets.Features.from_arrow_schema(datafmt.SCHEMAS[table])
    ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming, features=features)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
        if "part_id" not in datafmt.SCHEMAS[table].names:
            raise ValueError(f"table {table!r} has no part_id; split its parent table instead")
        ds = ds.filter(lambda row: split_of(row["part_id"]) == split)
    return ds


def to_sft(ds: datasets.Dataset | datasets.IterableDataset, chat: bool = False
           ) -> datasets.Dataset | datasets.IterableDataset:
    """SFT format: ``prompt``/``completion`` columns, or ``messages`` (user, assistant) with ``chat``; a
    table that already has ``messages`` (multi-turn conversations) keeps them."""
    keep = {"prompt", "completion", "messages"}
    if chat:
        return ds.map(lambda row: {"messages": [{"role": "user", "content": row["prompt"]},
                                                {"role": "assistant", "content": row["completion"]}]},
                      remove_columns=[c for c in (ds.column_names or [])])
    drop = [c for c in (ds.column_names or []) if c not in keep]
    return ds.remove_columns(drop) if drop else ds


REFERENCE_COLUMN = "reference"
"""The GRPO rows' column holding the expert's answer to the prompt (:func:`to_grpo` with ``reference``)."""


def to_grpo(ds: datasets.Dataset | datasets.IterableDataset, reference: bool = False
            ) -> datasets.Dataset | datasets.IterableDataset:
    """GRPO format: ``prompt`` plus the columns :func:`envs.scoring.layer_reward` needs (``job``, ``layer``)
    and, with ``reference``, the expert's answer as :data:`REFERENCE_COLUMN` (for :mod:`training.guidance`).

    Only layer steps are kept (start and end steps have no ``layer_reward``).
    """
    keep = {"prompt", "job", "layer"}
    ds = ds.filter(lambda row: row["step_kind"] == "layer")
    if reference:
        ds = ds.rename_column("completion", REFERENCE_COLUMN)
        keep.add(REFERENCE_COLUMN)
    drop = [c for c in (ds.column_names or []) if c not in keep]
    return ds.remove_columns(drop) if drop else ds


def _show(root: Path) -> int:
    manifest = datafmt.read_manifest(root)
    card = root / "README.md"
    if card.is_file():
        print(card.read_text().rstrip())
    print(f"\nkind {manifest.kind}, schema {manifest.schema_version}, code {manifest.code_version}, "
          f"seed {manifest.seed}")
    for table, count in sorted(manifest.records.items()):
        print(f"  {table}: {count} records")
    tables = sorted({e["table"] for e in manifest.shards if "table" in e})
    sample_table = "sft" if "sft" in tables else "programs" if "programs" in tables else tables[0]
    ds = load_table(root, sample_table, verify_hashes=False)
    row: dict[str, Any] = ds[0]
    print(f"\nsample record of '{sample_table}':")
    for key, value in row.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        text = text.replace("\n", "\\n")
        print(f"  {key}: {text[:160]}{'…' if len(text) > 160 else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description="check or show a dataset")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check the manifest and every shard's SHA-256")
    verify.add_argument("dir", type=Path)
    show = sub.add_parser("show", help="print the card, the counts and a sample record")
    show.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return _show(args.dir)
        problems = datafmt.verify(args.dir)
    except datafmt.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if problems:
        print(f"{args.dir}: {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
              file=sys.stderr)
        return 1
    manifest = datafmt.read_manifest(args.dir)
    print(f"{args.dir}: intact ({len(manifest.shards)} shards, "
          + ", ".join(f"{k} {v}" for k, v in sorted(manifest.records.items())) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
