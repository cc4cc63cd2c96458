"""Property tests of the validator: random and mutated programs never crash or hang it, and a forbidden
command, however it is written, always blocks."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safety.validator import TuningState, Verdict, validate, validate_tuning
from sim_bridge.commands import FORBIDDEN_COMMANDS
from sim_bridge.profiles import PrinterProfile, load_printer

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
ALLOWED_SAMPLE = (Path(__file__).parent / "safety_golden" / "must_allow" / "prusaslicer_corexy300_cube10.gcode")
REAL_LINES = ALLOWED_SAMPLE.read_text().splitlines()[:400]
"""Start code and first layers of real PrusaSlicer output that the validator allows on corexy300-klipper."""
PROFILE: PrinterProfile = load_printer("corexy300-klipper")
WORDS = ["G0", "G1", "G2", "G3", "G4", "G28", "G90", "G91", "G92", "M82", "M83", "M84", "M104", "M109", "M140",
         "M190", "M106", "M220", "M221", "M204", "SET_GCODE_OFFSET", "SAVE_GCODE_STATE", "RESTORE_GCODE_STATE",
         "SET_VELOCITY_LIMIT", "TEMPERATURE_WAIT", "SET_HEATER_TEMPERATURE", "PRINT_START", "T1", "N5", "M302"]
NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda v: f"{v:g}"),
                   st.integers(-10**6, 10**6).map(str), st.sampled_from(["", ".", "-", "1e5", "nan", "inf"]))
ARG = st.one_of(
    st.tuples(st.sampled_from("XYZEFIJRSPTAB"), NUMBER).map("".join),
    st.tuples(st.sampled_from(["Z", "Z_ADJUST", "MOVE", "NAME", "TARGET", "HEATER", "ACCEL", "VELOCITY",
                               "MINIMUM", "SENSOR", "EXTRUDER", "BED"]), NUMBER).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(["(note)", "(Z-5", ";", "*12", "HEATER=extruder", "SENSOR=extruder"]),
)
LINE = st.tuples(st.sampled_from(WORDS), st.lists(ARG, max_size=5)).map(lambda t: " ".join([t[0], *t[1]]))


def _sane(verdict: Verdict, data: bytes) -> None:
    assert verdict.verdict in ("allow", "block")
    assert verdict.allowed == (not verdict.violations)
    assert verdict.sha256 == hashlib.sha256(data).hexdigest()
    assert all(v.rule and v.message and v.line >= 0 for v in verdict.violations)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data: bytes) -> None:
    _sane(validate(data, PROFILE), data)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("GMNTXYZEFIJRS0123456789.-+ ;()*=_\t\r\nabcxyz\u00e9\u0413")),
               max_size=600))
def test_random_text_never_crashes(text: str) -> None:
    _sane(validate(text, PROFILE), text.encode())


@FUZZ
@given(st.lists(LINE, max_size=40))
def test_random_programs_never_crash(lines: list[str]) -> None:
    text = "\n".join(lines)
    _sane(validate(text, PROFILE), text.encode())


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["delete", "duplicate", "swap", "number", "insert"]),
                          st.integers(0, len(REAL_LINES) - 1), LINE), max_size=8))
def test_mutated_real_programs_never_crash(mutations: list[tuple[str, int, str]]) -> None:
    lines = list(REAL_LINES)
    for kind, index, new in mutations:
        index %= len(lines)
        if kind == "delete" and len(lines) > 1:
            del lines[index]
        elif kind == "duplicate":
            lines.insert(index, lines[index])
        elif kind == "swap":
            lines[index], lines[-1 - index] = lines[-1 - index], lines[index]
        elif kind == "number":
            lines[index] = lines[index].replace("1", "9", 1)
        else:
            lines.insert(index, new)
    text = "\n".join(lines)
    _sane(validate(text, PROFILE), text.encode())


def test_real_sample_is_allowed() -> None:
    assert validate("\n".join(REAL_LINES), PROFILE).allowed


DISGUISES = [
    lambda c: c.lower(),
    lambda c: c[0] + " " + c[1:] if c[1:2].isdigit() else c,
    lambda c: c[0] + "0" + c[1:] if c[1:2].isdigit() else c,
    lambda c: f"(harmless) {c}",
    lambda c: f"{c} ; G1 X10",
    lambda c: f"\t{c}\t",
    lambda c: _numbered(c),
]


def _numbered(code: str) -> str:
    body = f"N7 {code}"
    checksum = 0
    for byte in body.encode():
        checksum ^= byte
    return f"{body}*{checksum}"


@FUZZ
@given(st.sampled_from(sorted(FORBIDDEN_COMMANDS)), st.lists(st.sampled_from(range(len(DISGUISES))), max_size=3),
       st.integers(0, len(REAL_LINES)))
def test_forbidden_command_in_any_disguise_blocks(code: str, disguises: list[int], where: int) -> None:
    line = code
    for index in disguises:
        line = DISGUISES[index](line)
    lines = list(REAL_LINES)
    lines.insert(where, line)
    verdict = validate("\n".join(lines), PROFILE)
    assert any(v.line == where + 1 for v in verdict.violations), line


@FUZZ
@given(st.text(max_size=300))
def test_tuning_never_crashes(text: str) -> None:
    verdict = validate_tuning(text, TuningState(210.0), PROFILE)
    assert verdict.verdict in ("allow", "block")


def test_large_input_is_bounded() -> None:
    data = b"G4 P1\n" * 200_000 + b"M302\n"
    start = time.perf_counter()
    verdict = validate(data, PROFILE)
    assert time.perf_counter() - start < 30.0
    assert [(v.line, v.rule) for v in verdict.violations] == [(200_001, "forbidden_command")]
