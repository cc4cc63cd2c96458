"""Property tests of the G-code reader: whatever the input, it ends promptly with commands or a GcodeError."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import WILD_DIR, WILD_FILES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim_bridge.gcode import GcodeError, GcodeReader, format_command, parse_line, to_text

_ROOT = Path(__file__).resolve().parents[1]
SAMPLED_FILES = ["06_skeinforge_20mmbox.gcode", "07_miraclegrue_20mmbox.gcode", "12_cura_4.10_reprap.gcode",
                 "18_prusaslicer_m486_nospace.gcode", "23_orcaslicer_2.3.0b2_k1max.gcode",
                 "25_bambustudio_2.04_a1mini.gcode", "30_kisslicer_1.6.3.gcode", "32_kirimoto_3.0.gcode"]


def _real_lines() -> list[bytes]:
    """Up to 300 lines from the start of each sampled wild file (headers, start code, first moves)."""
    lines: list[bytes] = []
    if not WILD_FILES:
        return [b"G28", b"G1 X10 Y10 E0.5 F1800", b"(<tag> (mm) )", b"print_start bed=70", b"N1 G1 X1*75"]
    for name in SAMPLED_FILES:
        with (WILD_DIR / name).open("rb") as fh:
            lines.extend(fh.readline(20_000).rstrip(b"\r\n") for _ in range(300))
    return [line for line in lines if line]


REAL_LINES = _real_lines()
FUZZ = settings(max_examples=200, deadline=timedelta(milliseconds=500),
                suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def read_all(source: object, **kwargs: object) -> list:
    """Read everything; only GcodeError may escape (as an empty result)."""
    reader = GcodeReader(source, **kwargs)
    try:
        commands = list(reader)
    except GcodeError as exc:
        assert exc.line >= 0
        assert str(exc).startswith(f"{exc.source}:{exc.line}: ")
        return []
    for cmd in commands:
        assert cmd.line >= 1
        assert cmd.code and cmd.code == cmd.code.upper()
        assert all(isinstance(v, float) for v in cmd.params.values())
    lines = [c.line for c in commands]
    assert lines == sorted(lines), "commands come in file order"
    assert all(line <= reader.lines_read for line in lines)
    return commands


@pytest.mark.timeout(120)
@FUZZ
@given(st.binary(max_size=4000), st.sampled_from([64, 1024, 256 * 1024]))
def test_arbitrary_bytes(data, max_line_bytes):
    read_all(data, max_line_bytes=max_line_bytes)


@pytest.mark.timeout(120)
@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text(text):
    read_all(text)


@pytest.mark.timeout(120)
@FUZZ
@given(st.lists(st.text(max_size=200), max_size=30))
def test_arbitrary_lines_iterable(lines):
    read_all(lines)


def _mutate(line: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(line)
    for kind, where, value in ops:
        pos = where % (len(data) + 1)
        if kind == 0:
            data.insert(pos, value)
        elif kind == 1 and data:
            del data[pos % len(data)]
        elif data:
            data[pos % len(data)] = value
    return bytes(data)


MUTATION = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), max_size=8)


@pytest.mark.timeout(120)
@FUZZ
@given(st.lists(st.tuples(st.sampled_from(REAL_LINES), MUTATION), min_size=1, max_size=40),
       st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r\n"]))
def test_mutated_real_lines(picked, ending):
    data = ending.join(_mutate(line, ops) for line, ops in picked)
    read_all(data)
    for line, ops in picked:
        parse_line(_mutate(line, ops).decode("latin-1"))  # a single line never raises at all


@pytest.mark.timeout(120)
@FUZZ
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                        max_size=80), max_size=30),
       st.sampled_from(["\n", "\r\n", "\r", "\r\r\n"]))
def test_text_and_its_utf8_bytes_read_alike(lines, ending):
    text = ending.join(line.replace("\r", "").replace("\n", "") for line in lines)
    as_text = [(c.line, c.code, c.args, c.comment) for c in GcodeReader(text)]
    as_bytes = [(c.line, c.code, c.args, c.comment) for c in GcodeReader(text.encode("utf-8"))]
    assert as_text == as_bytes


NUMBER = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 6))
CLASSIC = st.tuples(st.sampled_from(["G0", "G1", "G2", "G3", "G28", "G92", "M104", "M106", "M204", "G29.2"]),
                    st.dictionaries(st.sampled_from("XYZEFIJKRSPT"), NUMBER | st.just(math.nan), max_size=6))
EXTENDED = st.tuples(st.sampled_from(["SET_VELOCITY_LIMIT", "PRINT_START", "RESPOND", "EXCLUDE_OBJECT_START"]),
                     st.dictionaries(st.from_regex(r"[A-Z][A-Z_]{0,8}", fullmatch=True),
                                     st.from_regex(r"[A-Za-z0-9_.,\[\]-]{1,12}( [a-z]{1,5})?", fullmatch=True),
                                     max_size=4))
COMMENT = st.from_regex(r"[A-Za-z0-9 :.,_-]{0,30}", fullmatch=True).map(str.strip)


@pytest.mark.timeout(120)
@FUZZ
@given(CLASSIC | EXTENDED, COMMENT)
def test_format_parse_round_trip(command, comment):
    code, words = command
    if code[0] in "GM":
        line = format_command(code, words, comment=comment, decimals=None)
    else:
        line = format_command(code, args=words, comment=comment)
    cmd = parse_line(line)
    assert cmd is not None and cmd.code == code
    assert cmd.comment == comment
    if code[0] in "GM":
        assert cmd.params.keys() == words.keys()
        for key, value in words.items():
            assert cmd.params[key] == value or (math.isnan(value) and math.isnan(cmd.params[key]))
    else:
        assert cmd.args == words
    assert to_text(cmd) == line
