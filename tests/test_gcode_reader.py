"""Unit tests of the G-code reader and writer (sim_bridge/gcode.py), on hand-made lines and the wild corpus."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import WILD_DIR, WILD_FILES, WILD_MANIFEST, needs_wild

from sim_bridge.gcode import (
    MAX_LINE_BYTES,
    Command,
    GcodeError,
    GcodeReader,
    format_command,
    parse_line,
    read_gcode,
    to_text,
    write_gcode,
)

_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = WILD_MANIFEST


def same_command(a: Command, b: Command) -> bool:
    """Equal code, args, comment and params (nan equal to nan)."""
    if (a.code, a.args, a.comment) != (b.code, b.args, b.comment) or a.params.keys() != b.params.keys():
        return False
    return all(a.params[k] == b.params[k] or (math.isnan(a.params[k]) and math.isnan(b.params[k]))
               for k in a.params)


def lines_and_codes(source: object, **kwargs: object) -> list[tuple[int, str]]:
    return [(cmd.line, cmd.code) for cmd in GcodeReader(source, **kwargs)]


# --- parse_line -------------------------------------------------------------------------------------------

def test_words_without_spaces():
    cmd = parse_line("G1X104.028Y96.395E.00156")
    assert cmd is not None
    assert (cmd.code, cmd.params) == ("G1", {"X": 104.028, "Y": 96.395, "E": 0.00156})


def test_zero_padded_codes_and_leading_dot_numbers():
    assert parse_line("G01X.5 Y3.5").code == "G1"
    assert parse_line("G00X5 Y35 E0").params == {"X": 5.0, "Y": 35.0, "E": 0.0}
    assert parse_line("G02X27.5 Y30 I0 J-5 E1").code == "G2"


def test_lower_case_classic_and_extended():
    cmd = parse_line("g1 x5 y-2.5 e.01 f1800")
    assert (cmd.code, cmd.params) == ("G1", {"X": 5.0, "Y": -2.5, "E": 0.01, "F": 1800.0})
    macro = parse_line("print_start bed=70 extruder=210")
    assert (macro.code, macro.args, macro.is_extended) == ("PRINT_START", {"BED": "70", "EXTRUDER": "210"}, True)
    assert not cmd.is_extended


def test_semicolon_comment_is_kept_on_the_command():
    cmd = parse_line("G1 X5 ; perimeter (outer)")
    assert cmd.params == {"X": 5.0}
    assert cmd.comment == "perimeter (outer)"


def test_paren_comments_nested_are_removed():
    assert parse_line("(<setting> comb Running_Jump_Space_(mm): 2.0 </setting>)") is None
    cmd = parse_line("G1 X1 (a (b) c) Y2")
    assert cmd.params == {"X": 1.0, "Y": 2.0}
    assert cmd.comment == "a (b) c"


def test_paren_then_semicolon_comments_merge():
    cmd = parse_line("G1 X1 (squirt) ; note")
    assert cmd.params == {"X": 1.0}
    assert cmd.comment == "squirt note"


def test_blank_and_comment_only_lines_give_none():
    for line in ("", "   ", "; only a comment", "(only a comment)", "\t;x", "N5", "N5 *30"):
        assert parse_line(line) is None, line


def test_checksum_good_gives_no_warning():
    # XOR of the bytes of "N12 G1 X5" is 86.
    warnings: list = []
    cmd = parse_line("N12 G1 X5*86", 7, "job.gcode", warnings)
    assert (cmd.code, cmd.params, cmd.line) == ("G1", {"X": 5.0}, 7)
    assert warnings == []


def test_checksum_bad_gives_a_warning_naming_the_line():
    warnings: list = []
    cmd = parse_line("N12 G1 X5*85", 7, "job.gcode", warnings)
    assert (cmd.code, cmd.params) == ("G1", {"X": 5.0}), "the line is kept"
    assert len(warnings) == 1
    assert (warnings[0].source, warnings[0].line) == ("job.gcode", 7)
    assert "checksum" in warnings[0].message and "85" in warnings[0].message and "86" in warnings[0].message
    assert str(warnings[0]).startswith("job.gcode:7: warning:")


def test_checksum_bad_without_a_warning_list_does_not_fail():
    assert parse_line("N12 G1 X5*85").params == {"X": 5.0}


def test_letter_without_value_is_nan():
    cmd = parse_line("G28 X Y")
    assert set(cmd.params) == {"X", "Y"}
    assert all(math.isnan(v) for v in cmd.params.values())
    assert cmd.get("X") is None
    assert cmd.get("X", 0.0) == 0.0
    assert cmd.get("Z", 3.0) == 3.0


def test_extended_command_with_quoted_values():
    cmd = parse_line('SET_GCODE_VARIABLE MACRO=m VARIABLE=v VALUE="hello world" OTHER=\'a b\' N=3')
    assert cmd.code == "SET_GCODE_VARIABLE"
    assert cmd.args == {"MACRO": "m", "VARIABLE": "v", "VALUE": "hello world", "OTHER": "a b", "N": "3"}
    assert cmd.params == {}


def test_m117_keeps_its_text():
    cmd = parse_line("M117 Printing G1 X5 layer 3 ; a note")
    assert (cmd.code, cmd.params, cmd.text, cmd.comment) == ("M117", {}, "Printing G1 X5 layer 3", "a note")


def test_dotted_codes_and_large_tool_numbers():
    cmd = parse_line("G29.2 S0 ; turn off bed leveling compensation")
    assert (cmd.code, cmd.params) == ("G29.2", {"S": 0.0})
    assert parse_line("T1000").code == "T1000"
    assert parse_line("T255").code == "T255"
    assert parse_line("M486 S-1").params == {"S": -1.0}


# --- the streaming reader --------------------------------------------------------------------------------

PROGRAM = "G28\nG1 X10 Y10 F3000 ; move\n\n; comment\nM104 S200\n"
PROGRAM_CODES = [(1, "G28"), (2, "G1"), (5, "M104")]


def test_reader_gives_the_same_from_bytes_str_path_and_lines(tmp_path):
    path = tmp_path / "prog.gcode"
    path.write_text(PROGRAM)
    assert lines_and_codes(PROGRAM) == PROGRAM_CODES
    assert lines_and_codes(PROGRAM.encode()) == PROGRAM_CODES
    assert lines_and_codes(path) == PROGRAM_CODES
    assert lines_and_codes(str(path)) == PROGRAM_CODES
    assert lines_and_codes(PROGRAM.splitlines(keepends=True)) == PROGRAM_CODES
    reader = GcodeReader(path)
    assert reader.name == str(path)
    list(reader)
    assert reader.lines_read == 5


def test_reader_can_iterate_twice(tmp_path):
    path = tmp_path / "prog.gcode"
    path.write_text(PROGRAM)
    reader = GcodeReader(path)
    assert [c.line for c in reader] == [c.line for c in reader] == [1, 2, 5]


@pytest.mark.parametrize(("data", "expected"), [
    (b"G1 X1\r\nG1 X2\r\n\r\nG1 X3", [1, 2, 4]),          # CRLF, last line without an ending
    (b"G1 X1\rG1 X2\r\rG1 X3\r", [1, 2, 4]),              # CR only (classic Mac)
    (b"G1 X1\nG1 X2\r\nG1 X3\rG1 X4\n", [1, 2, 3, 4]),    # mixed
    (b"G1 X1\r\r\nG1 X2\r\r\nG1 X3", [1, 2, 3]),          # CR CR LF: one ending, as grep -n counts it
    (b"G1 X1\n\n\nG1 X2", [1, 4]),
])
def test_line_endings_give_1_based_line_numbers(data, expected):
    assert [c.line for c in GcodeReader(data)] == expected
    assert [c.params["X"] for c in GcodeReader(data)] == [float(i + 1) for i in range(len(expected))]
    assert [c.line for c in GcodeReader(data.decode())] == expected, "str must number lines like bytes"


def test_form_feed_and_unicode_separators_do_not_end_lines():
    text = "G1 X1 ; a\x0cb\u2028c\nG1 X2\n"
    assert lines_and_codes(text) == [(1, "G1"), (2, "G1")]
    assert lines_and_codes(text.encode()) == [(1, "G1"), (2, "G1")]


def test_crlf_split_across_read_chunks(tmp_path):
    # The reader reads 64 KiB at a time; put the CR and the LF of one line ending on either side.
    first = b"; " + b"x" * (64 * 1024 - 3) + b"\r"
    data = first + b"\nG1 X2\r\nG1 X3\n"
    assert len(first) == 64 * 1024
    path = tmp_path / "split.gcode"
    path.write_bytes(data)
    assert [(c.line, c.params["X"]) for c in GcodeReader(path)] == [(2, 2.0), (3, 3.0)]


def test_cr_only_file_longer_than_the_line_limit_is_read():
    data = b"G1 X1\r" * 1000
    reader = GcodeReader(data, max_line_bytes=64)
    assert [c.line for c in reader][-1] == 1000
    assert reader.lines_read == 1000


def test_nul_byte_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "binary.gcode"
    path.write_bytes(b"G28\nG1 X1\x00\x01\x02\nG1 X2\n")
    with pytest.raises(GcodeError) as info:
        list(GcodeReader(path))
    assert (info.value.source, info.value.line) == (str(path), 2)
    assert str(info.value).startswith(f"{path}:2: ")
    assert "NUL" in str(info.value)


def test_nul_in_text_is_an_error():
    with pytest.raises(GcodeError) as info:
        list(GcodeReader("G28\n\nG1\x00X1\n"))
    assert info.value.line == 3


def test_invalid_utf8_warns_with_the_line_and_goes_on(tmp_path):
    path = tmp_path / "latin1.gcode"
    path.write_bytes(b"G28\n; caf\xe9 au lait\nG1 X\xff5 Y2\nG1 X3\n")
    reader = GcodeReader(path)
    commands = list(reader)
    assert [c.line for c in commands] == [1, 3, 4]
    assert [w.line for w in reader.warnings] == [2, 3]
    assert all("UTF-8" in w.message and w.source == str(path) for w in reader.warnings)


def test_many_invalid_utf8_lines_are_summarised():
    data = b"".join(b"; \xff\nG1 X1\n" for _ in range(10))
    reader = GcodeReader(data)
    assert len(list(reader)) == 10
    assert len(reader.warnings) == 4
    assert "10 lines" in reader.warnings[-1].message


def test_megabyte_line_is_an_error_with_its_line_number_promptly(tmp_path):
    path = tmp_path / "long.gcode"
    path.write_bytes(b"G28\nG1 X1\n; " + b"A" * (1 << 20) + b"\nG1 X2\n")
    start = time.perf_counter()
    with pytest.raises(GcodeError) as info:
        list(GcodeReader(path))
    assert time.perf_counter() - start < 5.0
    assert info.value.line == 3
    assert str(MAX_LINE_BYTES) in str(info.value)


def test_megabyte_line_without_ending_is_an_error_too():
    with pytest.raises(GcodeError) as info:
        list(GcodeReader(b"G28\n" + b"G1 X1 " * (1 << 18)))
    assert info.value.line == 2


def test_line_just_under_the_limit_is_read():
    line = b"G1 X1 ;" + b"c" * 93
    assert len(line) == 100
    assert lines_and_codes(line + b"\n" + line, max_line_bytes=100) == [(1, "G1"), (2, "G1")]
    with pytest.raises(GcodeError):
        list(GcodeReader(line + b"c\nG1\n", max_line_bytes=100))


def test_empty_file_warns(tmp_path):
    path = tmp_path / "empty.gcode"
    path.write_bytes(b"")
    commands, warnings = read_gcode(path)
    assert commands == []
    assert len(warnings) == 1 and "empty" in warnings[0].message


def test_missing_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.gcode"
    for source in (missing, str(missing)):
        with pytest.raises(GcodeError) as info:
            list(GcodeReader(source))
        assert info.value.source == str(missing)
        assert "no such file" in str(info.value)


# --- the writer --------------------------------------------------------------------------------------------

def test_format_command_orders_words_whatever_the_dict_order():
    a = format_command("G1", {"F": 1800.0, "E": 0.5, "Y": 2.0, "X": 1.0, "Z": 0.2})
    b = format_command("G1", {"X": 1.0, "Z": 0.2, "Y": 2.0, "F": 1800.0, "E": 0.5})
    assert a == b == "G1 X1 Y2 Z0.2 E0.5 F1800"


def test_format_command_numbers():
    assert format_command("G1", {"X": -0.0, "Y": 1.234567, "E": 12.0}) == "G1 X0 Y1.23457 E12"
    assert format_command("G1", {"X": 1.234567}, decimals=2) == "G1 X1.23"
    assert format_command("G28", {"X": math.nan}) == "G28 X"
    assert format_command("M104", {"S": 200.0}, comment="heat") == "M104 S200 ; heat"


def test_format_command_quotes_arguments_with_spaces():
    line = format_command("RESPOND", args={"TYPE": "echo", "MSG": "Heating bed"})
    assert line == 'RESPOND TYPE=echo MSG="Heating bed"'
    assert parse_line(line).args == {"TYPE": "echo", "MSG": "Heating bed"}


ROUND_TRIP_LINES = [
    "G1X104.028Y96.395E.00156", "g1 x5 y-2.5 e.01", "G28 X Y", "N12 G1 X5*86", "G1 X1 (a (b) c) Y2",
    "print_start bed=70 extruder=210", 'SET_GCODE_VARIABLE MACRO=m VARIABLE=v VALUE="a b"', "M117 Hi there",
    "G29.2 S0", "T1000", "M486 S-1", "G1 Y12.0 E0.449012", "M74 W0.0366307", "G1 X0.1 Y0.2 ; c ; d",
    "EXCLUDE_OBJECT_DEFINE NAME=a.stl CENTER=150,150 POLYGON=[[1,2],[3,4]]", "G2 X1 Y1 I-0.5 J0.5 E0.1",
]


@pytest.mark.parametrize("line", ROUND_TRIP_LINES)
def test_parse_to_text_parse_round_trip(line):
    first = parse_line(line)
    text = to_text(first)
    again = parse_line(text)
    assert same_command(first, again), (line, text)
    assert to_text(again) == text, "to_text is canonical: a second pass changes nothing"


def test_write_gcode_is_deterministic_and_reads_back(tmp_path):
    commands = [c for c in (parse_line(line, i + 1) for i, line in enumerate(ROUND_TRIP_LINES)) if c]
    one, two = tmp_path / "one.gcode", tmp_path / "two.gcode"
    write_gcode(commands, one)
    write_gcode(commands + ["; trailer"], two)
    data = one.read_bytes()
    assert b"\r" not in data
    assert two.read_bytes() == data + b"; trailer\n"
    back, warnings = read_gcode(one)
    assert warnings == []
    assert len(back) == len(commands)
    assert all(same_command(a, b) for a, b in zip(commands, back, strict=True))


# --- the wild corpus --------------------------------------------------------------------------------------

@needs_wild
@pytest.mark.parametrize("entry", MANIFEST["files"], ids=WILD_FILES)
def test_wild_file_reads_twice_alike_and_matches_the_manifest(entry):
    reader = GcodeReader(WILD_DIR / entry["file"])
    first = list(reader)
    first_warnings = list(reader.warnings)
    reader.warnings.clear()
    second = list(reader)
    assert len(first) > 0
    assert len(second) == len(first)
    assert [c.line for c in second] == [c.line for c in first]
    assert reader.warnings == first_warnings
    # Counts the corpus manifest states, taken independently of this reader.
    assert reader.lines_read == entry["line_count"]
    codes = Counter(c.code for c in first)
    assert codes["G2"] + codes["G3"] == entry["arcs_G2_G3"]
    assert codes["M486"] == entry["M486_lines"]
    assert codes["G10"] + codes["G11"] == entry["firmware_retract_G10_G11"]
    assert {k: codes[k] for k in entry["tool_change_commands"]} == entry["tool_change_commands"]
    extended = Counter()
    for name, count in entry["klipper_extended_commands"].items():
        extended[name.upper()] += count
    assert {k: codes[k] for k in extended} == dict(extended)
    assert all(c.line <= entry["line_count"] for c in first)


def wild(name: str) -> dict[int, Command]:
    commands, warnings = read_gcode(WILD_DIR / name)
    assert warnings == []
    return {c.line: c for c in commands}


@needs_wild
def test_wild_facts_klipper_and_hand_written():
    move = wild("01_klipper_move.gcode")
    assert min(move) == 4 and move[4].code == "G28"
    assert any(c.code == "GET_POSITION" for c in move.values())
    arcs = wild("03_handarc_demo.gcode")
    assert min(arcs) == 7, "line 4 holds G00 … inside a comment"
    assert (arcs[7].code, arcs[7].params) == ("G0", {"X": 5.0, "Y": 35.0, "E": 0.0})
    assert (arcs[9].code, arcs[9].params["J"]) == ("G2", -5.0)


@needs_wild
def test_wild_facts_makerbot():
    skein = wild("06_skeinforge_20mmbox.gcode")
    assert min(skein) == 5 and skein[5].code == "M105"
    assert 27 not in skein, "line 27 is a nested ( … (mm) … ) comment"
    assert all(c.code[0] in "GMT" for c in skein.values())
    grue = wild("07_miraclegrue_20mmbox.gcode")
    assert grue[23].params == {"X": 15.899, "Y": -11.844, "Z": 0.6, "F": 1800.0, "A": 7.096}
    assert grue[23].comment == "d: 31.798"
    assert sum("A" in c.params for c in grue.values()) == 1773
    assert not any("E" in c.params for c in grue.values()), "Miracle-Grue extrudes on A only"


@needs_wild
def test_wild_facts_slicers():
    cura = wild("12_cura_4.10_reprap.gcode")
    assert cura[14].code == "PRINT_START"
    assert cura[14].args == {"BED": "110", "EXTRUDER": "235", "CHAMBER": "40"}
    benchy = wild("16_arcwelder_slic3rpe_benchy.gcode")
    assert (benchy[36].code, benchy[36].params) == (
        "G3", {"X": 75.225, "Y": 85.483, "I": 5.966, "J": 7.58, "E": 2.30279})
    nospace = wild("18_prusaslicer_m486_nospace.gcode")
    assert nospace[2734].params == {"X": 104.028, "Y": 96.395, "E": 0.00156}
    orca = wild("23_orcaslicer_2.3.0b2_k1max.gcode")
    define = orca[112]
    assert define.code == "EXCLUDE_OBJECT_DEFINE"
    assert define.args["NAME"] == "AzulTileTray.stl_id_0_copy_0"
    assert define.args["CENTER"] == "150,150"
    assert define.args["POLYGON"].startswith("[[39.4142,185.015],[39.4151,114.979]")


@needs_wild
def test_wild_facts_bambu_kisslicer_kiri_icesl_fullcontrol():
    bambu = wild("25_bambustudio_2.04_a1mini.gcode")
    assert [line for line, c in bambu.items() if c.code == "T1000"] == [850, 974]
    assert bambu[1701].code == "T255"
    assert 258 not in bambu, "line 258 is a 10,906-character comment"
    kiss = wild("30_kisslicer_1.6.3.gcode")
    assert min(kiss) == 393 and kiss[393].code == "G21", "hex-encoded start G-code in comments is not code"
    kiri = wild("32_kirimoto_3.0.gcode")
    assert (kiri[88].code, kiri[88].args) == ("PRINT_START", {"BED": "70", "EXTRUDER": "210"})
    assert kiri[12142].code == "PRINT_END"
    icesl = wild("33_icesl_2021.gcode")
    assert max(icesl) == 24592 and icesl[24592].code == "M84", "CR CR LF endings counted once"
    vase = wild("34_fullcontrol_ripplevase.gcode")
    assert (vase[16808].code, vase[16808].comment) == ("G10", "retract")


@needs_wild
@pytest.mark.parametrize("name", [
    "07_miraclegrue_20mmbox.gcode", "16_arcwelder_slic3rpe_benchy.gcode", "21_prusaslicer_2.8.1_minicube.gcode",
    "25_bambustudio_2.04_a1mini.gcode", "34_fullcontrol_ripplevase.gcode",
])
def test_wild_round_trip(name):
    commands, _ = read_gcode(WILD_DIR / name)
    for cmd in commands:
        again = parse_line(to_text(cmd), cmd.line)
        assert again is not None and same_command(cmd, again), (cmd, to_text(cmd))


def test_text_with_a_name_is_read_as_text():
    commands, warnings = read_gcode("G28\nG1 X1\n", name="completion")
    assert [(c.line, c.code) for c in commands] == [(1, "G28"), (2, "G1")]
    with pytest.raises(GcodeError) as info:
        list(GcodeReader("G28\n\x00", name="completion"))
    assert info.value.source == "completion"
    assert [c.code for c in GcodeReader("G28\rM23 part.gcode")] == ["G28", "M23"], "CR text is not a file name"


def test_lf_only_keeps_carriage_returns_in_their_lines(tmp_path: Path) -> None:
    # Prunt splits a file at LF alone: a CRLF file's lines end in CR (which its parser then refuses).
    text = "G28\r\nG1 X5\rY5\n"
    path = tmp_path / "crlf.gcode"
    path.write_bytes(text.encode())
    for source in (text, text.encode(), path):
        assert list(GcodeReader(source, lf_only=True).numbered_lines()) == [(1, "G28\r"), (2, "G1 X5\rY5")]
        assert [t for _, t in GcodeReader(source).numbered_lines()] == ["G28", "G1 X5", "Y5"]
