"""Reading and measuring a recorded Prunt trajectory: ``prunt_simulator``'s ``DATA OUTPUT`` lines.

The simulator prints one line ``DATA OUTPUT, x, y, z, e`` (mm) per step-generator command, 0.1 ms apart,
and no timestamps (``shared/data/prunt/README.md`` documents the recordings). Time comes from the count:

- at each *block end* the simulator repeats the final position 6 times for its plotter (not time steps),
  and the next block starts with a sample equal to that end, so a block end shows as a *run* of about 8
  identical lines. Runs of 7 or more identical lines are block-end runs (*rests*); each counts
  ``max(1, round(length / 8))`` block ends (a zero-length block such as ``M104`` adds another 8 lines);
- ``time_s = (samples - 6 * block_ends) * step_s`` and the exact motion time lies in
  ``time_s_bounds = ((samples - 8 * block_ends) * step_s, (samples - 7 * block_ends) * step_s]``;
- a sample's own time (:class:`SampleChunk`, :class:`Block`, :func:`speed_profile`,
  :mod:`sim_bridge.prunt_path`) leaves out the padding of the rests before it and stands still during a
  rest.

A raw stdout capture must be cut to the ``DATA OUTPUT`` lines first, and the 8 start-up lines at the
origin dropped (they would read as a rest); any other line is an error naming the file and line. A pause
shortens the steps of its cosine ramp below 0.1 ms, which no line shows: a paused block reads long (in
``http/print_samples_with_pause``, the F600 move takes 15.0461 s against 15.0127 s unpaused).

Speeds are first differences of consecutive samples; acceleration the central 2nd difference
``p[i+1] - 2 p[i] + p[i-1]`` and jerk the 3rd difference ``p[i+2] - 3 p[i+1] + 3 p[i] - p[i-1]``, over
X, Y, Z only (Prunt ignores E in the path limits), skipping every window that touches a rest. The
*tangential* part is the component along the velocity (central velocity for acceleration, the middle
step's for jerk): Prunt limits the path acceleration, which is the tangential one; the full vector is
larger in blended corners. These are the recorder's own definitions: ``summary.json`` is reproduced.

Files are read in chunks of ``chunk_lines`` lines, plain text or xz, with a few samples kept between
chunks, so memory does not grow with the file (real ones reach 1.4 GB). The xz decoder itself holds one
dictionary of fixed size (64 MiB for ``xz -9``), whatever the file's length.

**Decimated files** (every ``decimation``-th sample plus the last, as ``cube_layers``): positions, both
bounding boxes' X and Y, the net E, the top speed and the acceleration plateaus are recovered; jerk comes
from coarser differences and reads low (cube_layers: 300754 against 305167 mm/s³ tangential); the E sums
are lower bounds; the extruding statistics are approximate (a kept pair where E rises spans 10 samples,
not all of them extruding). A rest of 8 lines spans at most one kept line, so rests are found as
consecutive kept lines closer than :data:`DECIMATED_REST_TOL_MM`, each counted as one block end: a
zero-length block inside a rest is missed (0.6 ms of ``time_s`` each, and ``time_s_bounds`` then miss
too). The last line's spacing is unknown; ``samples`` and the times take it as a full spacing, so
``time_s`` is good to about 2 ms and block times to 1 ms.
"""

from __future__ import annotations

import io
import itertools
import lzma
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim_bridge.gcode import GcodeError

STEP_S = 1e-4
"""Interpolation time of the step generator: one line per 0.1 ms."""
PADDING_LINES = 6
"""Copies of the final position the simulator prints at each block end (not time steps)."""
BLOCK_END_MIN_RUN = 7
"""A run of this many identical lines or more is a block end."""
BLOCK_END_RUN_LINES = 8
"""Lines of one block end: final sample, 6 copies and the next block's start sample."""
DECIMATED_REST_TOL_MM = 1e-6
"""Kept lines of a decimated file this close (every axis) are at rest. A real rest reads ~1e-7 mm at
1 ms spacing; the slowest corner of the recordings moves 1.5e-3 mm per ms."""
DEFAULT_CHUNK_LINES = 4096
"""Lines parsed at once: about 0.5 MB of text, and a few MB of memory at the peak."""
_PREFIX = b"DATA OUTPUT,"
_PREFIX_CODES = np.frombuffer(_PREFIX, np.uint8)
_EXPECTED = "expected 'DATA OUTPUT, x, y, z, e'"
_XZ_MAGIC = b"\xfd7zXZ\x00"
AXES = ("X", "Y", "Z", "E")


class TrajectoryError(GcodeError):
    """A recording that cannot be read as Prunt samples; the message names the file and line (0: the file)."""


@dataclass(frozen=True, slots=True)
class Block:
    """One stretch of motion between two rests (the first starts at the last of the identical first samples).

    ``first_sample`` is the last sample of the rest before, ``last_sample`` the first of the rest after, as
    full-stream indices; ``motion_time_s`` counts the steps between them, so it can be ~0.3 ms off (near-rest
    samples that print identically, the clamped last step)."""

    first_sample: int
    last_sample: int
    start_time_s: float
    end_time_s: float
    motion_time_s: float
    start_xyze_mm: tuple[float, float, float, float]
    end_xyze_mm: tuple[float, float, float, float]
    peak_speed_mm_s: float
    """Largest XYZ first-difference speed in the block."""
    peak_speed_e_mm_s: float


@dataclass(frozen=True, slots=True)
class Extruding:
    """The sample pairs where E increases."""

    pairs: int
    time_s: float
    path_mm: float
    max_speed_mm_s: float
    mean_speed_mm_s: float


@dataclass(frozen=True, slots=True)
class Trajectory:
    """What one recording measures; field names follow the recorder's ``summary.json``."""

    source: str
    lines: int
    """Sample lines in the file."""
    decimation: int
    step_s: float
    samples: int
    """Samples of the full stream: ``lines`` unless decimated (then estimated, see the module doc)."""
    block_ends: int
    time_s: float
    time_s_bounds: tuple[float, float]
    max_speed_mm_s: float
    max_axis_speed_mm_s: tuple[float, float, float, float]
    max_accel_mm_s2: float
    """Largest |acceleration vector| over X, Y, Z."""
    max_tangential_accel_mm_s2: float
    max_jerk_mm_s3: float
    max_tangential_jerk_mm_s3: float
    e_total_mm: float
    e_positive_sum_mm: float
    e_negative_sum_mm: float
    bbox_mm: dict[str, tuple[float, float]]
    bbox_extruding_mm: dict[str, tuple[float, float]] | None
    """X, Y, Z range of both samples of every pair where E increases; None without extrusion."""
    extruding: Extruding | None
    blocks: tuple[Block, ...]
    first_xyze_mm: tuple[float, float, float, float]
    last_xyze_mm: tuple[float, float, float, float]

    def summary(self) -> str:
        """A few readable lines."""
        bounds = ", ".join(f"{a} {lo:.3f}..{hi:.3f}" for a, (lo, hi) in self.bbox_mm.items())
        text = [f"{self.source}: {self.samples} samples, {self.block_ends} block ends, {self.time_s:.4f} s",
                f"max speed {self.max_speed_mm_s:.3f} mm/s, accel {self.max_accel_mm_s2:.1f} "
                f"(tangential {self.max_tangential_accel_mm_s2:.1f}) mm/s², tangential jerk "
                f"{self.max_tangential_jerk_mm_s3:.1f} mm/s³",
                f"E net {self.e_total_mm:.5f} mm (+{self.e_positive_sum_mm:.5f} / {self.e_negative_sum_mm:.5f})",
                f"bbox {bounds}"]
        text += [f"block {k}: {b.motion_time_s:.4f} s, peak {b.peak_speed_mm_s:.3f} mm/s"
                 for k, b in enumerate(self.blocks)]
        return "\n".join(text)


def _open(path: Path) -> io.BufferedReader:
    if not path.is_file():
        raise TrajectoryError(str(path), 0, "no such file")
    with path.open("rb") as fh:
        magic = fh.read(len(_XZ_MAGIC))
    # The content decides, not the name: a renamed or uncompressed recording still reads. LZMAFile's
    # own readline costs ~1 µs a line in Python; a C BufferedReader over it splits lines for free.
    return io.BufferedReader(lzma.open(path, "rb"), 1 << 16) if magic == _XZ_MAGIC else path.open("rb")


def _bad_line(lines: list[bytes], source: str, first_line: int) -> TrajectoryError:
    """The error for the first line of a chunk the fast checks refused."""
    for k, raw in enumerate(lines):
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        fields = text.split(",")
        quoted = repr(text if len(text) <= 120 else text[:117] + "...")
        if fields[0] != "DATA OUTPUT" or len(fields) != 5:
            hint = "" if text.startswith("DATA OUTPUT") else \
                " (keep only the simulator's DATA OUTPUT lines: remove log lines such as 'Setup done.')"
            return TrajectoryError(source, first_line + k + 1, f"{_EXPECTED}{hint}, got {quoted}")
        try:
            values = [float(f) for f in fields[1:] if f.strip() and len(f.split()) == 1]
        except ValueError:
            values = []
        if len(values) != 4:
            return TrajectoryError(source, first_line + k + 1, f"{_EXPECTED}: a value is not a number, got {quoted}")
        if not all(map(math.isfinite, values)):
            return TrajectoryError(source, first_line + k + 1, f"{_EXPECTED}: a value is not finite, got {quoted}")
    return TrajectoryError(source, first_line + 1, f"lines {first_line + 1}-{first_line + len(lines)}: "
                           f"{_EXPECTED}, numbers as Ada prints them (1.5E+0)")


def _parse(lines: list[bytes], source: str, first_line: int) -> np.ndarray:
    """(n, 4) samples of ``lines``, every line checked without a Python loop over them."""
    n = len(lines)
    data = b"".join(lines)
    text = np.frombuffer(data, np.uint8)
    lengths = np.fromiter(map(len, lines), np.int64, n)
    starts = np.cumsum(lengths) - lengths
    good = lengths > len(_PREFIX)
    cols = np.minimum(starts[:, None] + np.arange(len(_PREFIX)), len(data) - 1)
    good &= np.all(text[cols] == _PREFIX_CODES, axis=1)
    comma = text == ord(",")
    commas = np.flatnonzero(comma)
    good &= np.bincount(np.searchsorted(starts, commas, "right") - 1, minlength=n) == 4
    if not good.all():
        raise _bad_line(lines, source, first_line)
    # One token per field: a token's field is the count of commas before it; field 0 holds DATA and
    # OUTPUT, and a line's last field shares its count with the next line's first (1 + 2 tokens).
    gap = text <= ord(" ")
    gap |= comma
    del comma  # the text-sized arrays are what a chunk costs: keep few alive
    tokens = np.flatnonzero(gap[:-1] > gap[1:]) + 1
    if not gap[0]:
        tokens = np.concatenate(([0], tokens))
    del gap
    per_field = np.bincount(np.searchsorted(commas, tokens), minlength=4 * n + 1)
    expected = np.ones(4 * n + 1, np.int64)
    expected[::4] = 3
    expected[0], expected[-1] = 2, 1
    if per_field.shape != expected.shape or not np.array_equal(per_field, expected):
        raise _bad_line(lines, source, first_line)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            data = data.replace(_PREFIX, b" ")
            values = np.fromstring(data.replace(b",", b" "), sep=" ")
    except (ValueError, DeprecationWarning):
        raise _bad_line(lines, source, first_line) from None
    if values.size != 4 * n or not np.isfinite(values).all():
        raise _bad_line(lines, source, first_line)
    return values.reshape(n, 4)


def _raw_chunks(path: Path, chunk_lines: int) -> Iterator[np.ndarray]:
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be at least 1, not {chunk_lines}")
    read = 0
    try:
        with _open(path) as fh:
            while lines := list(itertools.islice(fh, chunk_lines)):
                yield _parse(lines, str(path), read)
                read += len(lines)
    except (lzma.LZMAError, EOFError) as exc:
        raise TrajectoryError(str(path), read + 1, f"broken xz data after line {read}: {exc}") from None
    if not read:
        raise TrajectoryError(str(path), 0, "no DATA OUTPUT lines")


@dataclass(frozen=True, slots=True)
class SampleChunk:
    """Consecutive samples of a recording, as :func:`iter_chunks` hands them on."""

    first: int
    """Line index of ``xyze[0]`` (times ``decimation`` for the full-stream sample)."""
    xyze: np.ndarray
    """(n, 4) positions in mm."""
    rest: np.ndarray
    """True for samples in a rest (block-end run)."""
    time_s: np.ndarray
    """Each sample's time, padding left out (standing still during a rest)."""


class _Scanner:
    """Cuts the line stream into rests and motion, across chunk boundaries.

    A sample is handed on once it is known whether its run of identical lines is a rest: only the last,
    still open run can be undecided, and while it is shorter than a rest it waits (under 7 lines)."""

    def __init__(self, decimation: int, step_s: float) -> None:
        if decimation < 1 or step_s <= 0:
            raise ValueError(f"decimation must be >= 1 and step_s > 0, not {decimation} and {step_s}")
        self.decimation = decimation
        self.step_s = step_s
        self.min_run = BLOCK_END_MIN_RUN if decimation == 1 else 2
        self.lines = 0
        self.block_ends = 0
        self.prev: np.ndarray | None = None
        self.run_start = 0
        self.pending = np.empty((0, 4))
        self.pad = 0
        """Padding samples before the next sample handed on (full-stream samples)."""

    def _same(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.decimation == 1:
            return np.all(a == b, axis=1)
        return np.max(np.abs(a - b), axis=1) <= DECIMATED_REST_TOL_MM

    def _ends_of(self, lengths: np.ndarray) -> np.ndarray:
        """Block ends of each rest: ``max(1, round(length / 8))``, halves to even as Python rounds."""
        if self.decimation > 1:
            return np.ones_like(lengths)  # a rest's length is lost to decimation
        return np.maximum(1, np.round(lengths / BLOCK_END_RUN_LINES)).astype(np.int64)

    def feed(self, arr: np.ndarray, *, last: bool = False) -> SampleChunk | None:
        g, n = self.lines, len(arr)
        self.lines += n
        same = np.empty(n, bool)
        same[1:] = self._same(arr[1:], arr[:-1])
        same[0] = self.prev is not None and bool(self._same(arr[:1], self.prev[None])[0])
        ids = np.cumsum(~same)
        if self.prev is None:
            ids -= 1
            starts = g + np.flatnonzero(~same)
        else:
            starts = np.concatenate(([self.run_start], g + np.flatnonzero(~same)))
        lengths = np.diff(np.concatenate((starts, [g + n])))
        is_rest = lengths >= self.min_run
        closed = np.ones(len(starts), bool)
        closed[-1] = last
        pads = np.where(closed & is_rest, PADDING_LINES * self._ends_of(lengths), 0)
        self.block_ends += int(pads.sum()) // PADDING_LINES
        pad_before = self.pad + np.concatenate(([0], np.cumsum(pads)[:-1]))
        buf = np.concatenate((self.pending, arr))
        buf_ids = np.concatenate((np.zeros(len(self.pending), np.int64), ids))
        first = g - len(self.pending)
        cut = len(buf) if last or is_rest[-1] else int(starts[-1]) - first
        self.pending = buf[cut:]
        self.prev, self.run_start = arr[-1], int(starts[-1])
        self.pad += int(pads.sum())
        if cut == 0:
            return None
        r = buf_ids[:cut]
        index = np.where(is_rest[r], starts[r], first + np.arange(cut))
        times = (index * self.decimation - pad_before[r]) * self.step_s
        return SampleChunk(first, buf[:cut], is_rest[r], times)


def iter_chunks(path: str | os.PathLike[str], *, step_s: float = STEP_S, decimation: int = 1,
                chunk_lines: int = DEFAULT_CHUNK_LINES) -> Iterator[SampleChunk]:
    """Stream a recording as :class:`SampleChunk` s of about ``chunk_lines`` samples, in order."""
    return _scan(path, _Scanner(decimation, step_s), chunk_lines)


def _scan(path: str | os.PathLike[str], scanner: _Scanner, chunk_lines: int) -> Iterator[SampleChunk]:
    raw = _raw_chunks(Path(path), chunk_lines)
    ahead = next(raw)
    # One raw chunk is held back so that the last one is known to be last (it closes the open run).
    for arr in itertools.chain(raw, [None]):
        chunk = scanner.feed(ahead, last=arr is None)
        if chunk is not None:
            yield chunk
        ahead = arr


def _tangential(vec: np.ndarray, vel: np.ndarray) -> np.ndarray:
    speed = np.linalg.norm(vel, axis=1)
    return np.abs(np.einsum("ij,ij->i", vec, vel)) / np.where(speed > 0, speed, np.inf)


def _max(values: np.ndarray, current: float) -> float:
    return max(current, float(values.max())) if values.size else current


def read_trajectory(path: str | os.PathLike[str], *, step_s: float = STEP_S, decimation: int = 1,
                    chunk_lines: int = DEFAULT_CHUNK_LINES) -> Trajectory:
    """Measure a recording (plain or xz), streaming; raises :class:`TrajectoryError` on bad input."""
    scanner = _Scanner(decimation, step_s)
    dt = step_s * decimation
    tail, tail_rest, tail_t = np.empty((0, 4)), np.empty(0, bool), np.empty(0)
    peak = dict.fromkeys(("v", "a", "at", "j", "jt"), 0.0)
    axis_peak = np.zeros(4)
    e_sums = [0.0, 0.0]
    lo, hi = np.full(4, np.inf), np.full(4, -np.inf)
    ext_lo, ext_hi = np.full(3, np.inf), np.full(3, -np.inf)
    ext = [0, 0.0, 0.0]  # pairs, path, top speed
    blocks: list[Block] = []
    start: tuple[int, np.ndarray, float] | None = None  # first sample, xyze, time of the open block
    run_peak = np.zeros(2)
    first_xyze: np.ndarray | None = None
    for chunk in _scan(path, scanner, chunk_lines):
        h = len(tail)
        p = np.concatenate((tail, chunk.xyze))
        rest = np.concatenate((tail_rest, chunk.rest))
        t = np.concatenate((tail_t, chunk.time_s))
        base = chunk.first - h
        if first_xyze is None:
            first_xyze = p[0].copy()
            start = (0, p[0].copy(), float(t[0]))
        lo, hi = np.minimum(lo, chunk.xyze.min(axis=0)), np.maximum(hi, chunk.xyze.max(axis=0))
        q = max(h - 1, 0)
        step = np.diff(p[q:], axis=0)
        speeds = np.stack((np.linalg.norm(step[:, :3], axis=1), np.abs(step[:, 3])), axis=1) / dt
        axis_peak = np.maximum(axis_peak, np.abs(step).max(axis=0, initial=0.0) / dt)
        peak["v"] = _max(speeds[:, 0], peak["v"])
        de = step[:, 3]
        e_sums[0] += float(de[de > 0].sum())
        e_sums[1] += float(de[de < 0].sum())
        feed = de > 0
        if feed.any():
            ext[0] += int(feed.sum())
            ext[1] += float(speeds[feed, 0].sum() * dt)
            ext[2] = _max(speeds[feed, 0], ext[2])
            both = np.concatenate((p[q:-1][feed, :3], p[q + 1:][feed, :3]))
            ext_lo, ext_hi = np.minimum(ext_lo, both.min(axis=0)), np.maximum(ext_hi, both.max(axis=0))
        xyz = p[:, :3]
        c = max(h - 2, 0)  # accel windows whose last sample is new
        if len(p) - c >= 3:
            w = xyz[c:]
            acc = (w[2:] - 2 * w[1:-1] + w[:-2]) / dt**2
            ok = ~(rest[c + 2:] | rest[c + 1:-1] | rest[c:-2])
            peak["a"] = _max(np.linalg.norm(acc[ok], axis=1), peak["a"])
            peak["at"] = _max(_tangential(acc[ok], (w[2:] - w[:-2])[ok]), peak["at"])
        c = max(h - 3, 0)
        if len(p) - c >= 4:
            w, r = xyz[c:], rest[c:]
            jerk = (w[3:] - 3 * w[2:-1] + 3 * w[1:-2] - w[:-3]) / dt**3
            ok = ~(r[3:] | r[2:-1] | r[1:-2] | r[:-3])
            peak["j"] = _max(np.linalg.norm(jerk[ok], axis=1), peak["j"])
            peak["jt"] = _max(_tangential(jerk[ok], (w[2:-1] - w[1:-2])[ok]), peak["jt"])
        # Blocks: a rest's first sample ends one, its last starts the next; pairs between give the peaks.
        k = np.arange(q, len(p) - 1)
        begins = k[rest[k + 1] & ~rest[k]] + 1
        ends = k[rest[k] & ~rest[k + 1]]
        if start is not None and start[0] == 0 and not run_peak.any():
            moved = np.flatnonzero(np.any(step != 0, axis=1))  # the leading identical samples are a rest
            if moved.size and base + q + moved[0] > start[0]:
                i = q + int(moved[0])
                start = (base + i, p[i].copy(), float(t[i]))
        cursor = q
        for i, is_begin in sorted([(int(i), True) for i in begins] + [(int(i), False) for i in ends]):
            run_peak = np.maximum(run_peak, speeds[cursor - q:i - q].max(axis=0, initial=0.0))
            cursor = max(cursor, i)
            if is_begin and start is not None and base + i > start[0]:
                blocks.append(_block(start, (base + i, p[i], float(t[i])), run_peak, step_s, decimation))
                start = None
            elif not is_begin:
                # The rest's samples hold its first one's time: the block starts one step before the next.
                start, run_peak = (base + i, p[i].copy(), float(t[i + 1]) - dt), np.zeros(2)
        run_peak = np.maximum(run_peak, speeds[cursor - q:].max(axis=0, initial=0.0))
        keep = min(3, len(p))
        tail, tail_rest, tail_t = p[-keep:].copy(), rest[-keep:].copy(), t[-keep:].copy()
    assert first_xyze is not None  # _raw_chunks raises on an empty file
    last_xyze = tail[-1]
    if start is not None and not tail_rest[-1] and scanner.lines - 1 > start[0]:
        blocks.append(_block(start, (scanner.lines - 1, last_xyze, float(tail_t[-1])), run_peak, step_s,
                             decimation))
    return _trajectory(str(path), scanner, peak, axis_peak, e_sums, lo, hi, ext, ext_lo, ext_hi, blocks,
                       first_xyze, last_xyze)


def _block(start: tuple[int, np.ndarray, float], end: tuple[int, np.ndarray, float], run_peak: np.ndarray,
           step_s: float, decimation: int) -> Block:
    """The block between two line indices (``start`` and ``end`` hold line, xyze, time)."""
    first, last = start[0] * decimation, end[0] * decimation
    return Block(first, last, start[2], end[2], (last - first) * step_s, _xyze(start[1]), _xyze(end[1]),
                 float(run_peak[0]), float(run_peak[1]))


def _xyze(a: np.ndarray) -> tuple[float, float, float, float]:
    return (float(a[0]), float(a[1]), float(a[2]), float(a[3]))


def _trajectory(source: str, scanner: _Scanner, peak: dict[str, float], axis_peak: np.ndarray,
                e_sums: list[float], lo: np.ndarray, hi: np.ndarray, ext: list[float], ext_lo: np.ndarray,
                ext_hi: np.ndarray, blocks: list[Block], first: np.ndarray, last: np.ndarray) -> Trajectory:
    """The result of :func:`read_trajectory` from its running totals."""
    d, lines, ends, step_s = scanner.decimation, scanner.lines, scanner.block_ends, scanner.step_s
    samples = lines if d == 1 else (lines - 1) * d + 1
    fewest = lines if d == 1 else (lines - 2) * d + 2  # the last kept line may lie 1 sample past the grid
    pairs, path_mm, top = int(ext[0]), float(ext[1]), float(ext[2])
    extruding = Extruding(pairs, pairs * step_s * d, path_mm, top, path_mm / (pairs * step_s * d)) \
        if pairs else None
    return Trajectory(
        source=source, lines=lines, decimation=d, step_s=step_s, samples=samples, block_ends=ends,
        time_s=(samples - PADDING_LINES * ends) * step_s,
        time_s_bounds=((fewest - BLOCK_END_RUN_LINES * ends) * step_s, (samples - 7 * ends) * step_s),
        max_speed_mm_s=peak["v"], max_axis_speed_mm_s=_xyze(axis_peak),
        max_accel_mm_s2=peak["a"], max_tangential_accel_mm_s2=peak["at"], max_jerk_mm_s3=peak["j"],
        max_tangential_jerk_mm_s3=peak["jt"], e_total_mm=float(last[3] - first[3]),
        e_positive_sum_mm=e_sums[0], e_negative_sum_mm=e_sums[1],
        bbox_mm={a: (float(lo[k]), float(hi[k])) for k, a in enumerate(AXES)},
        bbox_extruding_mm={a: (float(ext_lo[k]), float(ext_hi[k])) for k, a in enumerate(AXES[:3])}
        if pairs else None,
        extruding=extruding, blocks=tuple(blocks),
        first_xyze_mm=_xyze(first), last_xyze_mm=_xyze(last))



def speed_profile(path: str | os.PathLike[str], *, every: int = 10, step_s: float = STEP_S,
                  decimation: int = 1, chunk_lines: int = DEFAULT_CHUNK_LINES) -> tuple[np.ndarray, np.ndarray]:
    """(time_s, speed_mm_s) of every ``every``-th line, for plots: the XYZ speed over the step into it."""
    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    times, speeds, prev = [], [], None
    for chunk in iter_chunks(path, step_s=step_s, decimation=decimation, chunk_lines=chunk_lines):
        xyz = chunk.xyze[:, :3]
        steps = np.diff(np.concatenate((xyz[:1] if prev is None else prev, xyz)), axis=0)
        prev = xyz[-1:]
        keep = (chunk.first + np.arange(len(xyz))) % every == 0
        times.append(chunk.time_s[keep])
        speeds.append(np.linalg.norm(steps[keep], axis=1) / (step_s * decimation))
    return np.concatenate(times), np.concatenate(speeds)
