"""The Prunt trajectory reader against real ``prunt_simulator`` recordings (``shared/data/prunt``).

Every value the recorder put in a folder's ``summary.json`` that the README defines is reproduced from
``samples.txt.xz``; the corner speeds and chord errors the README reports come out of the commanded
corners of ``input.gcode``. The recordings lie in ``../shared/data/prunt`` beside a clone (conftest's
``PRUNT_DIR``, next to the wild G-code corpus); without them the tests are skipped, except under CI, where
they must run.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import lzma
import math
import os
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PRUNT_DIR

from sim_bridge.gcode import read_gcode
from sim_bridge.prunt_path import follow_path, pass_times, path_deviation
from sim_bridge.prunt_trajectory import (
    Trajectory,
    TrajectoryError,
    iter_chunks,
    read_trajectory,
    speed_profile,
)

pytestmark = pytest.mark.skipif(not PRUNT_DIR.is_dir() and not os.environ.get("CI"),
                                reason=f"Prunt recordings not found at {PRUNT_DIR}")
FOLDERS = sorted(p.name for p in PRUNT_DIR.glob("*") if (p / "summary.json").is_file()) \
    if PRUNT_DIR.is_dir() else []
FULL = [f for f in FOLDERS if f != "cube_layers"]
"""Folders holding every sample (cube_layers keeps every 10th)."""


@functools.cache
def _summary(folder: str) -> dict[str, Any]:
    return json.loads((PRUNT_DIR / folder / "summary.json").read_text())


@functools.cache
def _read(folder: str) -> Trajectory:
    every = _summary(folder)["file_samples_txt_xz"]["decimated_every"]
    return read_trajectory(PRUNT_DIR / folder / "samples.txt.xz", decimation=every)


def _corners(folder: str) -> list[tuple[float, float, float]]:
    """The commanded XYZ vertices of ``input.gcode`` (G90 moves from the origin, where G28 homes)."""
    pos = [0.0, 0.0, 0.0]
    vertices = [tuple(pos)]
    commands, _ = read_gcode(PRUNT_DIR / folder / "input.gcode")
    for cmd in commands:
        assert cmd.code not in ("G91", "G92") or cmd.get("X") is None, "the helper knows absolute XYZ only"
        if cmd.code in ("G0", "G1"):
            pos = [cmd.get(a, p) for a, p in zip("XYZ", pos, strict=True)]
            if tuple(pos) != vertices[-1]:
                vertices.append(tuple(pos))
    return vertices


def test_the_recordings_are_here() -> None:
    # A run that found no folder would pass every parametrized test below by having none.
    assert len(FULL) == 9 and "cube_layers" in FOLDERS


@pytest.mark.parametrize("folder", FULL)
def test_time_and_block_ends_equal_the_summary(folder: str) -> None:
    tr, s = _read(folder), _summary(folder)
    assert (tr.samples, tr.lines, tr.block_ends) == (s["samples"], s["samples"], s["block_ends"])
    assert tr.time_s == pytest.approx(s["time_s"], abs=1e-9)
    assert tr.time_s_bounds == pytest.approx(tuple(s["time_s_bounds"]), abs=1e-9)


@pytest.mark.parametrize("folder", FULL)
def test_speed_acceleration_and_jerk_match_the_summary(folder: str) -> None:
    tr, s = _read(folder), _summary(folder)
    assert tr.max_speed_mm_s == pytest.approx(s["max_speed_xyz_mm_s"], abs=1e-6)
    assert tr.max_axis_speed_mm_s == pytest.approx(tuple(s["max_speed_axis_mm_s"].values()), abs=1e-6)
    # The summary rounds accelerations to 0.001 and jerks to 0.1.
    assert tr.max_accel_mm_s2 == pytest.approx(s["max_accel_xyz_mm_s2"], abs=6e-4)
    assert tr.max_tangential_accel_mm_s2 == pytest.approx(s["max_accel_tangential_mm_s2"], abs=6e-4)
    assert tr.max_jerk_mm_s3 == pytest.approx(s["max_jerk_xyz_mm_s3"], abs=0.06)
    assert tr.max_tangential_jerk_mm_s3 == pytest.approx(s["max_jerk_tangential_mm_s3"], abs=0.06)


@pytest.mark.parametrize("folder", FULL)
def test_extrusion_and_bounding_boxes_match_the_summary(folder: str) -> None:
    tr, s = _read(folder), _summary(folder)
    assert (tr.e_total_mm, tr.e_positive_sum_mm, tr.e_negative_sum_mm) == pytest.approx(
        (s["e_total_mm"], s["e_positive_sum_mm"], s["e_negative_sum_mm"]), abs=1e-9)
    assert tr.bbox_mm == {a: tuple(v) for a, v in s["bbox_mm"].items()}
    expected = s["bbox_extruding_mm"] and {a: tuple(v) for a, v in s["bbox_extruding_mm"].items()}
    assert tr.bbox_extruding_mm == expected
    if s["extruding"] is None:
        assert tr.extruding is None
    else:
        ext = s["extruding"]
        assert (tr.extruding.pairs, tr.extruding.time_s) == (ext["samples"], pytest.approx(ext["time_s"]))
        assert tr.extruding.path_mm == pytest.approx(ext["path_mm"], abs=6e-5)
        assert tr.extruding.max_speed_mm_s == pytest.approx(ext["max_speed_mm_s"], abs=6e-4)
        assert tr.extruding.mean_speed_mm_s == pytest.approx(ext["mean_speed_mm_s"], abs=6e-5)


@pytest.mark.parametrize("folder", FULL)
def test_blocks_match_the_summary(folder: str) -> None:
    tr, s = _read(folder), _summary(folder)
    assert len(tr.blocks) == len(s["blocks"])
    for block, want in zip(tr.blocks, s["blocks"], strict=True):
        assert (block.first_sample, block.last_sample) == (want["first_sample"], want["last_sample"])
        assert block.motion_time_s == pytest.approx(want["motion_time_s"], abs=1e-9)
        assert block.start_xyze_mm == pytest.approx(tuple(want["start_xyze"]), abs=1e-9)
        assert block.end_xyze_mm == pytest.approx(tuple(want["end_xyze"]), abs=1e-9)
        assert block.peak_speed_mm_s == pytest.approx(want["peak_speed_xyz_mm_s"], abs=1e-6)
        assert block.peak_speed_e_mm_s == pytest.approx(want["peak_speed_e_mm_s"], abs=6e-5)
        assert block.end_time_s - block.start_time_s == pytest.approx(block.motion_time_s)


def test_speeds_moves_take_the_times_the_readme_gives() -> None:
    tr = _read("speeds")
    times = [round(b.motion_time_s, 4) for b in tr.blocks]
    peaks = [round(b.peak_speed_mm_s, 3) for b in tr.blocks]
    assert times == [1.2153, 15.0127, 3.0278, 1.0611, 0.6112, 0.1127]
    assert peaks == [100.0, 10.0, 50.0, 150.0, 300.0, 10.0]
    # A sample's time leaves out the padding: each rest's 6 copies, so the block starts follow on.
    # A 9-line rest holds 2 steps (the start sample and the clamped step) between the blocks.
    gaps = [b.start_time_s - a.end_time_s for a, b in itertools.pairwise(tr.blocks)]
    assert gaps == pytest.approx([2e-4, 2e-4, 2e-4, 3e-4, 2e-4], abs=1e-9)
    assert tr.blocks[-1].end_time_s + 2e-4 == pytest.approx(tr.time_s)


@pytest.mark.parametrize(("folder", "chord_mm", "corner_speed_mm_s"),
                         [("square20_chord0.0035", 0.0035, 1.4577), ("square20_chord0.1", 0.1, 13.62)])
def test_square_corners_keep_the_chord_error(folder: str, chord_mm: float, corner_speed_mm_s: float) -> None:
    path = PRUNT_DIR / folder / "samples.txt.xz"
    corners = _corners(folder)
    assert corners[2:7] == [(90, 90, 0.2), (110, 90, 0.2), (110, 110, 0.2), (90, 110, 0.2), (90, 90, 0.2)]
    passes, deviation = follow_path(path, corners)
    assert [p.vertex for p in passes] == list(range(len(corners)))
    assert all(a.time_s < b.time_s for a, b in itertools.pairwise(passes))
    # The three inner 90° corners of the square: passed at the chord error, at the README's speed.
    for p in passes[3:6]:
        assert p.distance_mm == pytest.approx(chord_mm, rel=1e-3)
        assert p.speed_mm_s == pytest.approx(corner_speed_mm_s, abs=1e-4 if chord_mm < 0.01 else 5e-3)
    # The square closes on its first corner: the second visit, not the first, is the last print corner.
    assert passes[6].time_s > passes[5].time_s > passes[2].time_s
    assert passes[-1].time_s == pytest.approx(_read(folder).blocks[-1].end_time_s)
    # The blends stay within the chord error of the corners, so closer still to the legs.
    assert 0.85 * chord_mm < deviation.max_mm <= chord_mm
    assert deviation.mean_mm < 0.02 * chord_mm
    assert deviation.samples == _read(folder).samples
    assert path_deviation(path, corners, xy_only=True).max_mm <= deviation.max_mm


def test_zigzag_takes_every_corner_at_the_same_speed() -> None:
    passes = pass_times(PRUNT_DIR / "zigzag" / "samples.txt.xz", _corners("zigzag"))
    # At Z0.2: the Z move's end, the travel's, then the 200 segment ends; the last goes into the lift.
    turns = [p for p in passes if p.target_mm[2] == pytest.approx(0.2)][2:-1]
    assert len(turns) == 199
    assert [p.speed_mm_s for p in turns] == pytest.approx([1.4577] * len(turns), abs=2e-4)


def test_a_vertex_the_trajectory_misses_is_named() -> None:
    corners = [*_corners("square20_chord0.0035"), (50.0, 50.0, 50.0)]
    with pytest.raises(ValueError, match=r"vertex 8 \(50.0, 50.0, 50.0\) is never passed within 0.2 mm"):
        pass_times(PRUNT_DIR / "square20_chord0.0035" / "samples.txt.xz", corners)


def _close(a: object, b: object) -> None:
    """Equal, floats to 1e-12 relative (sums over chunks add in another order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()  # type: ignore[union-attr]
        for key in a:
            _close(a[key], b[key])  # type: ignore[index]
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    else:
        assert a == b


def test_chunk_size_changes_nothing() -> None:
    path = PRUNT_DIR / "speeds" / "samples.txt.xz"
    _close(dataclasses.asdict(read_trajectory(path, chunk_lines=997)),
           dataclasses.asdict(read_trajectory(path, chunk_lines=1_000_000)))
    path = PRUNT_DIR / "square20_chord0.1" / "samples.txt.xz"
    corners = _corners("square20_chord0.1")
    small, large = follow_path(path, corners, chunk_lines=997), follow_path(path, corners, chunk_lines=50_000)
    _close(dataclasses.asdict(small[1]), dataclasses.asdict(large[1]))
    _close([dataclasses.asdict(p) for p in small[0]], [dataclasses.asdict(p) for p in large[0]])


def test_rests_split_across_chunks_of_any_size(tmp_path: Path) -> None:
    # The end of the speeds travel, its rest made 17 lines long (two block ends, as a zero-length block
    # adds), then the start of the next move: every chunk size from 1 line cuts the rest somewhere else.
    with lzma.open(PRUNT_DIR / "speeds" / "samples.txt.xz", "rb") as fh:
        lines = [next(fh) for _ in range(12220)][12100:]
    lines = lines[:54] + [lines[53]] * 8 + lines[54:]
    path = tmp_path / "rest.txt"
    path.write_bytes(b"".join(lines))
    whole = read_trajectory(path, chunk_lines=10**6)
    assert (whole.block_ends, whole.samples, len(whole.blocks)) == (2, 128, 2)
    assert whole.time_s == pytest.approx((128 - 12) * 1e-4)
    assert whole.blocks[0].last_sample == 53 and whole.blocks[1].first_sample == 53 + 16
    for chunk_lines in range(1, 20):
        _close(dataclasses.asdict(read_trajectory(path, chunk_lines=chunk_lines)), dataclasses.asdict(whole))
    times = np.concatenate([c.time_s for c in iter_chunks(path, chunk_lines=3)])
    assert np.all(np.diff(times) >= 0) and len(times) == 128


def test_the_decimated_cube_recovers_what_it_can(tmp_path: Path) -> None:
    tr, s = _read("cube_layers"), _summary("cube_layers")
    assert tr.lines == s["file_samples_txt_xz"]["lines"]
    assert abs(tr.samples - s["samples"]) < 10  # the last kept line's spacing is unknown
    assert tr.max_speed_mm_s == pytest.approx(s["max_speed_xyz_mm_s"], abs=1e-6)
    assert tr.max_tangential_accel_mm_s2 == pytest.approx(s["max_accel_tangential_mm_s2"], abs=1.0)
    assert 0.9 * s["max_jerk_tangential_mm_s3"] < tr.max_tangential_jerk_mm_s3 <= s["max_jerk_tangential_mm_s3"]
    assert tr.e_total_mm == pytest.approx(s["e_total_mm"], abs=1e-9)
    assert s["e_positive_sum_mm"] - 1e-4 < tr.e_positive_sum_mm <= s["e_positive_sum_mm"]
    assert tr.bbox_mm == {a: tuple(v) for a, v in s["bbox_mm"].items()}
    for axis in "XY":
        assert tr.bbox_extruding_mm[axis] == tuple(s["bbox_extruding_mm"][axis])
    # The zero-length block in the start rest is hidden: one block end fewer, 0.6 ms more.
    assert tr.block_ends == s["block_ends"] - 1
    assert tr.time_s == pytest.approx(s["time_s"], abs=2e-3)
    assert [b.motion_time_s for b in tr.blocks] == pytest.approx(
        [b["motion_time_s"] for b in s["blocks"]], abs=1.5e-3)
    assert [b.peak_speed_mm_s for b in tr.blocks] == pytest.approx(
        [b["peak_speed_xyz_mm_s"] for b in s["blocks"]], abs=1e-6)


def test_a_long_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    text = tmp_path / "cube.txt"
    with lzma.open(PRUNT_DIR / "cube_layers" / "samples.txt.xz", "rb") as src, text.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    size = text.stat().st_size
    tracemalloc.start()
    try:
        tr = read_trajectory(text, decimation=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 13_000_000 and peak < size / 2, f"peak {peak} bytes for a {size}-byte file"
    # Plain text and xz read alike.
    assert dataclasses.replace(tr, source=_read("cube_layers").source) == _read("cube_layers")


def test_speed_profile_is_decimated_for_plots() -> None:
    time_s, speed = speed_profile(PRUNT_DIR / "speeds" / "samples.txt.xz", every=50)
    tr = _read("speeds")
    assert len(time_s) == len(speed) == math.ceil(tr.samples / 50)
    assert np.all(np.diff(time_s) >= 0) and time_s[-1] < tr.time_s
    assert speed.max() == pytest.approx(300.0, abs=1e-6)


GOOD = b"DATA OUTPUT, 1.00000000000000000000E+0, 2.0E+0, 3.0E+0, 4.0E+0\n"


@pytest.mark.parametrize(("bad", "reason"), [
    (b"DATA OUTPUT, 1.0E+0, 2.0E+0, 3.0E+0", "expected 'DATA OUTPUT, x, y, z, e'"),
    (b"DATA OUTPUT, 1.0E+0, 2.0E+0, 3.0E+0, 4.0E+0, 5.0E+0", "expected"),
    (b"DATA OUTPUT, 1.0E+0, , 3.0E+0, 4.0E+0", "not a number"),
    (b"DATA OUTPUT, 1.0E+0, 2.0E+0 7, 3.0E+0, 4.0E+0", "not a number"),
    (b"DATA OUTPUT, 1.0E+0, abc, 3.0E+0, 4.0E+0", "not a number"),
    (b"DATA OUTPUT, 1.0E+0, nan, 3.0E+0, 4.0E+0", "not finite"),
    (b"Setup done.", "remove log lines"),
    (b"", "expected"),
])
@pytest.mark.parametrize("chunk_lines", [2, 4096])
def test_a_bad_line_is_named_with_its_file_and_number(tmp_path: Path, bad: bytes, reason: str,
                                                      chunk_lines: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(GOOD * 4 + bad + b"\n" + GOOD)
    with pytest.raises(TrajectoryError, match=rf"bad.txt:5: .*{reason}") as err:
        read_trajectory(path, chunk_lines=chunk_lines)
    assert err.value.line == 5 and err.value.source == str(path)
    if bad:
        assert repr(bad.decode())[1:-1] in str(err.value)


def test_missing_empty_and_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TrajectoryError, match=r"nowhere.txt:0: no such file"):
        read_trajectory(tmp_path / "nowhere.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(TrajectoryError, match=r"empty.txt:0: no DATA OUTPUT lines"):
        read_trajectory(tmp_path / "empty.txt")
    whole = (PRUNT_DIR / "square20_chord0.0035" / "samples.txt.xz").read_bytes()
    (tmp_path / "cut.xz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(TrajectoryError, match=r"cut.xz:\d+: broken xz data after line \d+"):
        read_trajectory(tmp_path / "cut.xz")
    (tmp_path / "one.txt").write_bytes(GOOD)
    assert read_trajectory(tmp_path / "one.txt").samples == 1


def test_a_paused_recording_reads_long_as_the_module_says() -> None:
    # The pause ramp's short steps count as 0.1 ms each: there are no timestamps to tell them apart.
    tr = read_trajectory(PRUNT_DIR / "http" / "print_samples_with_pause.txt.xz")
    assert tr.block_ends == 8  # the 8 start-up lines kept in this file, and its extra G1 Z2 block
    assert tr.blocks[1].motion_time_s == pytest.approx(15.0461, abs=1e-4)
    assert tr.blocks[1].motion_time_s > _read("speeds").blocks[1].motion_time_s + 0.03


def test_the_command_line_prints_the_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from sim_bridge.__main__ import main  # the command line, as `python -m sim_bridge` runs it

    assert main(["trajectory", str(PRUNT_DIR / "square20_chord0.1" / "samples.txt.xz")]) == 0
    out = capsys.readouterr().out
    assert "41190 samples, 1 block ends, 4.1184 s" in out and "tangential jerk 381351.1" in out
    (tmp_path / "bad.txt").write_bytes(GOOD + b"Setup done.\n")
    assert main(["trajectory", str(tmp_path / "bad.txt")]) == 2
    assert "bad.txt:2:" in capsys.readouterr().err.replace("\n", "")
