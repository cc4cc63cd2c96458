"""The on-disk dataset format: shards, manifest, dataset card (see docs/data.md).

A dataset is a folder::

    manifest.json            schema version, kind, record counts, SHA-256 of every shard, generator config
                             and seed, code version
    README.md                the dataset card
    tables/NAME-00000.parquet   table shards (sft, programs, traces, jobs …)
    images/00000/ID.png         images, one folder per shard
    quarantine/              (imports only) rejected inputs and reasons.jsonl

Shards are written to a temporary name and renamed into place, so a shard either exists whole or not at all;
an interrupted run leaves only whole shards (and stray ``*.tmp`` files, which the next run removes). The
manifest is written last, from the shards on disk. Parquet files are written without timestamps, so the same
records give the same bytes. The format works with ``dvc add DIR`` but needs no DVC.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
"""Version of this layout and of the table schemas below; bumped on any incompatible change."""
KINDS = ("simulation", "adaptation", "real_world")

FAILURE_TYPE = pa.struct([("mode", pa.string()), ("message", pa.string()), ("line", pa.int64()),
                          ("layer", pa.int64()), ("fatal", pa.bool_()), ("count", pa.int64())])

SCHEMAS: dict[str, pa.Schema] = {
    "jobs": pa.schema([
        ("job_id", pa.string()), ("part_id", pa.string()), ("difficulty", pa.int64()), ("job", pa.string()),
    ]),
    "sft": pa.schema([
        ("record_id", pa.string()), ("job_id", pa.string()), ("part_id", pa.string()), ("step", pa.int64()),
        ("step_kind", pa.string()), ("layer", pa.int64()), ("prompt", pa.string()), ("completion", pa.string()),
        ("job", pa.string()),
    ]),
    "programs": pa.schema([
        ("record_id", pa.string()), ("job_id", pa.string()), ("part_id", pa.string()), ("source", pa.string()),
        ("defect", pa.string()), ("gcode", pa.string()), ("job", pa.string()), ("printer", pa.string()),
        ("success", pa.bool_()), ("failures", pa.list_(FAILURE_TYPE)), ("print_time_s", pa.float64()),
        ("motion_s", pa.float64()), ("heating_s", pa.float64()), ("filament_mm", pa.float64()),
        ("layer_count", pa.int64()), ("image", pa.string()), ("outcome", pa.string()), ("note", pa.string()),
    ]),
    "traces": pa.schema([
        ("record_id", pa.string()), ("t_s", pa.float64()), ("hotend_c", pa.float64()),
        ("hotend_target_c", pa.float64()), ("bed_c", pa.float64()), ("bed_target_c", pa.float64()),
        ("fan", pa.float64()), ("flow_mm3_s", pa.float64()), ("x_mm", pa.float64()), ("y_mm", pa.float64()),
        ("z_mm", pa.float64()), ("e_mm", pa.float64()),
    ]),
}
"""Table schemas. ``traces`` rows share one time base per record (``t_s`` from the start of the program)."""


class DatasetError(ValueError):
    """A dataset that cannot be used as it is: missing shard, hash mismatch, unknown schema version."""


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_table(root: Path, table: str, shard: int, rows: list[dict[str, Any]]) -> Path:
    """Write one table shard atomically (``tables/TABLE-NNNNN.parquet``); returns its path."""
    schema = SCHEMAS[table]
    path = root / "tables" / f"{table}-{shard:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(data, tmp, compression="zstd", write_statistics=False, store_schema=True)
    os.replace(tmp, path)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write a file atomically (images, G-code files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def remove_partial_files(root: Path) -> int:
    """Delete ``*.tmp`` leftovers of an interrupted run; returns how many."""
    count = 0
    for tmp in root.rglob("*.tmp"):
        tmp.unlink()
        count += 1
    return count


@dataclass
class Manifest:
    """``manifest.json``: what the dataset holds and how to check and remake it."""

    name: str
    kind: str
    generator: dict[str, Any]
    seed: int | None
    code_version: str
    records: dict[str, int] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n"


def code_version() -> str:
    """The layerloop version that made a dataset (package version, plus the git commit when known)."""
    try:
        text = version("layerloop")
    except PackageNotFoundError:
        text = "unknown"
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        text += f"+git.{ref[:12]}"
    except OSError:
        pass
    return text


def write_manifest(root: Path, name: str, kind: str, generator: dict[str, Any], seed: int | None) -> Manifest:
    """Hash every shard on disk and write ``manifest.json`` (last, after all shards)."""
    if kind not in KINDS:
        raise DatasetError(f"kind {kind!r}: must be one of {', '.join(KINDS)}")
    manifest = Manifest(name=name, kind=kind, generator=generator, seed=seed, code_version=code_version())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _is_shard(root, p)):
        rel = path.relative_to(root).as_posix()
        entry: dict[str, Any] = {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        if path.suffix == ".parquet":
            table = path.name.rsplit("-", 1)[0]
            rows = pq.ParquetFile(path).metadata.num_rows
            entry.update(table=table, records=rows)
            manifest.records[table] = manifest.records.get(table, 0) + rows
        elif path.suffix == ".png":
            manifest.records["images"] = manifest.records.get("images", 0) + 1
        manifest.shards.append(entry)
    (root / "manifest.json").write_text(manifest.to_json())
    return manifest


def _is_shard(root: Path, path: Path) -> bool:
    top = path.relative_to(root).parts[0]
    return top in {"tables", "images", "gcode"} and not path.name.endswith(".tmp")


def read_manifest(root: Path) -> Manifest:
    """Read and check ``manifest.json`` (the schema version must be one this code knows)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"{root}: no manifest.json (is this a layerloop dataset folder?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version!r} is not known to this code "
                           f"(it reads version {SCHEMA_VERSION}); upgrade layerloop or remake the dataset")
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in data.items() if k in known})


def verify(root: Path, hashes: bool = True) -> list[str]:
    """Problems with a dataset folder (empty when intact): missing or changed shards, unlisted shards."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    listed = set()
    for entry in manifest.shards:
        path = root / entry["path"]
        listed.add(entry["path"])
        if not path.is_file():
            problems.append(f"{entry['path']}: missing shard")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{entry['path']}: size {path.stat().st_size} bytes, manifest says {entry['bytes']}")
        elif hashes and sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: SHA-256 mismatch (the shard changed or is corrupt)")
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _is_shard(root, p)):
        rel = path.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: shard not in the manifest")
    return problems


def table_paths(root: Path, table: str) -> list[Path]:
    """The shards of one table, in order (from the manifest)."""
    manifest = read_manifest(root)
    paths = [Path(root) / e["path"] for e in manifest.shards if e.get("table") == table]
    if not paths:
        known = sorted({e["table"] for e in manifest.shards if "table" in e})
        raise DatasetError(f"{root}: no '{table}' table (tables: {', '.join(known) or 'none'})")
    return paths


def write_card(root: Path, title: str, lines: Iterable[str]) -> None:
    """Write the dataset card ``README.md``."""
    (Path(root) / "README.md").write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")
