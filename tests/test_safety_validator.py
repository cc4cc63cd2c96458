"""The G-code validator (issue 6, part 1): golden must-block / must-allow files, real slicer output, the
rules one by one, the allow-list, live tuning and the CLI.

Each ``tests/safety_golden/must_block/*.gcode`` starts with ``; expect: RULE at lines N, M`` and must give
exactly those findings (on ender3-klipper) and nothing else; each ``must_allow`` file must give none.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from conftest import WILD_DIR, WILD_FILES, needs_wild

from safety.__main__ import main
from safety.validator import (
    FORBIDDEN_COMMANDS,
    SafetyPolicy,
    TuningState,
    Verdict,
    Violation,
    load_policy,
    validate,
    validate_tuning,
)
from sim_bridge import failures
from sim_bridge.config import ConfigError
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile

HERE = Path(__file__).parent
GOLDEN = HERE / "safety_golden"
FIXTURES = HERE / "fixtures"
_ROOT = HERE.parent
EXPECT_RE = re.compile(r"^; expect: ([a-z_]+) at lines? ([\d, ]+)$")
PRELUDE = "G90\nM82\nM140 S60\nM104 S210\nG28\nM190 S60\nM109 S210\nG92 E0\nG1 Z0.3 F600\n"
"""A clean start for ender3-klipper: heated, waited for, homed, at the first layer."""


@pytest.fixture(scope="module")
def ender3() -> PrinterProfile:
    return load_printer("ender3-klipper")


@pytest.fixture(scope="module")
def mk3s() -> PrinterProfile:
    return load_printer("mk3s-marlin")


def found(verdict: Verdict) -> set[tuple[str, int]]:
    return {(v.rule, v.line) for v in verdict.violations}


# -- golden files ------------------------------------------------------------------------------------------
def _expected(path: Path) -> set[tuple[str, int]]:
    first = path.read_bytes().split(b"\n")[0].split(b"\r")[0].decode()
    match = EXPECT_RE.match(first)
    assert match, f"{path.name}: first line must be '; expect: RULE at lines N, M'"
    return {(match.group(1), int(n)) for n in match.group(2).split(",")}


@pytest.mark.parametrize("path", sorted((GOLDEN / "must_block").glob("*.gcode")), ids=lambda p: p.stem)
def test_must_block(path: Path, ender3: PrinterProfile) -> None:
    verdict = validate(path, ender3)
    assert verdict.verdict == "block"
    assert found(verdict) == _expected(path)


def test_every_rule_and_disguise_has_a_golden_file() -> None:
    covered = {rule for path in (GOLDEN / "must_block").glob("*.gcode") for rule, _ in _expected(path)}
    assert failures.VALIDATOR_RULES - covered == {failures.UNREADABLE} | failures.TUNING_ONLY_RULES
    assert covered <= failures.VALIDATOR_RULES
    disguises = {p.stem for p in (GOLDEN / "must_block").glob("disguise_*.gcode")}
    assert {"disguise_lower_case", "disguise_spacing", "disguise_line_number_checksum", "disguise_paren_comment",
            "disguise_safe_after_semicolon"} <= disguises


MUST_ALLOW = [
    (GOLDEN / "must_allow" / "prusaslicer_corexy300_cube10.gcode", "corexy300-klipper"),
    # As a print host sends it: "N0 M110 N0*125" first, then every line numbered and checksummed.
    (GOLDEN / "must_allow" / "host_numbered_corexy300_cube10.gcode", "corexy300-klipper"),
    (GOLDEN / "must_allow" / "prusaslicer_mk3s_cone.gcode", "mk3s-marlin"),
    (GOLDEN / "must_allow" / "prusaslicer_ender3_macros_cylinder.gcode", "ender3-klipper"),
    *[(p, "mk3s-marlin") for p in sorted((FIXTURES / "prusaslicer").glob("*_mk3s.gcode"))],
    *[(p, "ender3-klipper") for p in sorted((FIXTURES / "prusaslicer").glob("*_ender3.gcode"))],
]


@pytest.mark.parametrize(("path", "printer"), MUST_ALLOW, ids=lambda x: getattr(x, "stem", x))
def test_real_prusaslicer_output_is_allowed(path: Path, printer: str) -> None:
    verdict = validate(path, load_printer(printer))
    assert verdict.violations == (), [str(v) for v in verdict.violations[:5]]
    assert verdict.allowed and verdict.lines > 1000


# -- real files from 20 slicers ----------------------------------------------------------------------------
K1: tuple[str, str, set[str]] = ("k1max", "allow", set())
"""Creality K1 Max output: the K1 Max test profile and its policy (vendor macros) in tests/safety_golden."""
WILD: dict[str, tuple[str, str, set[str]]] = {
    # prefix: (printer, verdict, rules that must be among the findings) and why a blocked file is unsafe.
    "01": ("ender3-klipper", "block", {"cold_extrusion"}),  # Klipper's test: extrudes with no heater set
    "02": ("ender3-klipper", "block", {"unknown_command"}),  # SD loops repeat moves the validator can't bound
    "03": ("ender3-klipper", "block", {"must_home_first"}),  # hand-written arcs: no G28, no heating
    "04": ("ender3-klipper", "block", {"must_home_first"}),
    "05": ("ender3-klipper", "block", {"must_home_first"}),
    "06": ("ender3-klipper", "block", {"unknown_command"}),  # Skeinforge/MakerBot M101/M103, no homing
    "07": ("ender3-klipper", "block", {"invalid_command"}),  # Miracle-Grue extrudes on the A axis
    "08": ("ender3-klipper", "block", {"invalid_command"}),
    "09": ("ender3-klipper", "block", {"must_home_first"}),  # old Slic3r, no start code at all
    "10": ("ender3-klipper", "allow", set()),  # Cura 2.3 (Anet A6, 220 mm class)
    "11": ("ender3-klipper", "block", {"extrusion_too_large", "must_home_first"}),  # origin-centred 1 mm layers, no G28
    "12": ("corexy300-klipper", "allow", set()),  # Cura 4.10 Voron (PRINT_START), M141 allow-listed below
    "13": K1, "14": ("ender3-klipper", "allow", set()),
    "15": ("ender3-klipper", "block", {"must_home_first"}),  # Slic3r PE start code without G28
    "16": ("ender3-klipper", "allow", set()),  # ArcWelder arcs
    "17": ("corexy300-klipper", "allow", set()),  # PrusaSlicer 2.4 for a 300 mm Klipper printer
    "18": ("mk3s-marlin", "block", {"acceleration"}),  # Prusa MINI limits (M201 Z400) above the MK3S's
    "19": ("mk3s-marlin", "block", {"acceleration"}),
    "20": ("ender3-klipper", "allow", set()),  # PrusaSlicer 2.7 spiral vase, 215 mm Marlin-flavour printer
    "21": ("mk3s-marlin", "block", {"forbidden_command"}),  # MK4S start code uses M302 S160
    "22": ("corexy300-klipper", "allow", set()),  # SuperSlicer, klipper flavour, ArcWelder
    "23": K1, "24": K1,
    "25": ("ender3-klipper", "block", {"forbidden_command", "unknown_command"}),  # Bambu: M211 X0 Y0 Z0
    "26": K1, "27": K1,
    "28": ("ender3-klipper", "block", {"unknown_command"}),  # Raise3D vendor codes M1001/M1002
    "29": K1,
    "30": ("ender3-klipper", "allow", set()), "31": ("ender3-klipper", "allow", set()),
    "32": ("ender3-klipper", "allow", set()), "33": ("ender3-klipper", "allow", set()),
    # FullControl's ripple vase extrudes 0.641 mm^2 where Klipper's default limit is 0.640: Klipper refuses it.
    "34": ("ender3-klipper", "block", {"extrusion_too_large"}),
}


def _wild_printer(key: str) -> tuple[PrinterProfile, SafetyPolicy | None]:
    printer = WILD[key][0]
    if printer == "k1max":
        return load_printer(GOLDEN / "k1max-klipper.yaml"), load_policy(GOLDEN / "k1max-policy.yaml")
    policy = SafetyPolicy(allow_commands=["M141"]) if key == "12" else None
    return load_printer(printer), policy


@needs_wild
@pytest.mark.parametrize("key", sorted(WILD))
def test_wild_gcode(key: str) -> None:
    path = next(WILD_DIR.glob(f"{key}_*.gcode"))
    profile, policy = _wild_printer(key)
    verdict = validate(path, profile, policy)
    _, expected, must = WILD[key]
    assert verdict.verdict == expected, [str(v) for v in verdict.violations[:5]]
    assert must <= verdict.rules()
    assert verdict.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_wild_gcode_table_covers_every_file() -> None:
    if not WILD_FILES:
        pytest.skip("shared/data/wild-gcode not present")
    assert {p.name[:2] for p in WILD_DIR.glob("*.gcode")} == set(WILD)


# -- rules one by one --------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(FORBIDDEN_COMMANDS))
def test_every_forbidden_command_is_blocked_and_cannot_be_allowed(code: str, ender3: PrinterProfile) -> None:
    verdict = validate(PRELUDE + f"{code.lower()} S1\n", ender3, SafetyPolicy(allow_commands=["MY_MACRO"]))
    assert found(verdict) == {(failures.FORBIDDEN_COMMAND, 10)}
    with pytest.raises(ConfigError, match="cannot be allowed"):
        SafetyPolicy(allow_commands=[code.lower()])


def test_findings_carry_line_command_rule_limit_value_message(ender3: PrinterProfile) -> None:
    verdict = validate(PRELUDE + "  G1 X240 Y10 ; too far  \n", ender3)
    (v,) = verdict.violations
    assert (v.line, v.command, v.rule) == (10, "G1 X240 Y10 ; too far", "move_out_of_range")
    assert v.limit == "X in [0, 235] mm" and v.value == "X=240 mm"
    assert v.message.startswith("Move out of range")
    assert set(v.as_dict()) == {"line", "command", "rule", "limit", "value", "message"}
    data = json.loads(json.dumps(verdict.as_dict()))
    assert data["verdict"] == "block" and data["violations"][0]["rule"] == "move_out_of_range"
    assert data["lines"] == 10 and len(data["sha256"]) == 64


def test_all_findings_are_collected_not_just_the_first(ender3: PrinterProfile) -> None:
    verdict = validate("M302\nG1 X10\nM500\nM104 S400\n", ender3)
    assert found(verdict) == {("forbidden_command", 1), ("must_home_first", 2), ("forbidden_command", 3),
                              ("temperature_out_of_range", 4)}


def test_findings_per_rule_are_capped_and_counted(ender3: PrinterProfile) -> None:
    verdict = validate("M302\n" * 10, ender3, SafetyPolicy(max_findings_per_rule=3))
    assert [v.line for v in verdict.violations] == [1, 2, 3, 4]
    assert verdict.violations[-1].value == "7 more"


def test_source_forms_give_the_same_verdict(tmp_path: Path, ender3: PrinterProfile) -> None:
    text = PRELUDE + "G1 X300\n"
    path = tmp_path / "p.gcode"
    path.write_text(text)
    verdicts = [validate(text, ender3), validate(text.encode(), ender3), validate(path, ender3)]
    assert len({v.sha256 for v in verdicts}) == 1
    assert verdicts[0].sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert all(found(v) == {("move_out_of_range", 10)} for v in verdicts)
    # A str is always text, even one that looks like a file name.
    assert validate("part.gcode", ender3).rules() == {"unknown_command"}


def test_klipper_m109_r_means_off_so_extrusion_is_cold(ender3: PrinterProfile, mk3s: PrinterProfile) -> None:
    program = "G28\nM109 R215\nG1 Z0.3\nG1 X20 Y20 E1\n"
    assert found(validate(program, ender3)) == {("cold_extrusion", 4)}
    assert validate(program, mk3s).allowed  # Marlin's M109 R heats (and cools) to 215 and waits


def test_cooling_hotend_may_retract_but_not_extrude(ender3: PrinterProfile) -> None:
    program = PRELUDE + "G1 X20 Y20 E1\nM104 S0\nG91\nG1 E-2\nG1 Z5 E-1\n"
    assert validate(program, ender3).allowed
    assert found(validate(program + "G1 X5 E1\n", ender3)) == {("cold_extrusion", 15)}


def test_declared_macro_homes_and_heats(ender3: PrinterProfile) -> None:
    program = "PRINT_START BED=60 EXTRUDER=210\nG1 Z0.3 F600\nG1 X20 Y20 E1\nPRINT_END\n"
    assert validate(program, ender3).allowed
    assert found(validate(program + "G1 X30\n", ender3)) == {("must_home_first", 5)}  # PRINT_END turns motors off
    assert found(validate("PRINT_START BED=60\nG1 Z0.3\nG1 X20 Y20 E1\n", ender3)) == {("cold_extrusion", 3)}


def test_allow_list_lets_a_printers_own_macro_through(tmp_path: Path, ender3: PrinterProfile) -> None:
    program = PRELUDE + "clean_nozzle WIPES=3\n"
    assert found(validate(program, ender3)) == {("unknown_command", 10)}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("allow_commands: [CLEAN_NOZZLE]\nmax_hotend_temp_c: 230\n")
    policy = load_policy(policy_file)
    assert validate(program, ender3, policy).allowed
    # The policy's tighter hotend cap applies in every form.
    assert found(validate(program + "M104 S240\n", ender3, policy)) == {("temperature_out_of_range", 11)}


def test_policy_yaml_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("allow_command: [X]\n")
    with pytest.raises(ConfigError, match="did you mean 'allow_commands'"):
        load_policy(bad)
    bad.write_text("flow_percent_min: 0\n")
    with pytest.raises(ConfigError, match="flow_percent_min"):
        load_policy(bad)


def test_arc_within_range_is_allowed(ender3: PrinterProfile) -> None:
    assert validate(PRELUDE + "G1 X100 Y200\nG2 X120 Y200 I10 J0 E0.5\nG3 X100 Y200 R10 E1\n", ender3).allowed


def test_unreadable_input_is_blocked_not_raised(tmp_path: Path, ender3: PrinterProfile) -> None:
    verdict = validate(b"G28\nG1 X1\x00\x01\x02\n", ender3)
    assert found(verdict) == {("unreadable", 2)}
    verdict = validate(b"G28\n" + b"X" * 300_000 + b"\n", ender3)
    assert verdict.rules() == {"unreadable"}


# -- live tuning -------------------------------------------------------------------------------------------
def test_tuning_windows(ender3: PrinterProfile) -> None:
    state = TuningState(hotend_temp_c=210.0, flow_percent=100.0)
    ok = "M221 S95\n; note\nm220 s150\nM104 S225\nM106 S255\nM107\nSET_PRESSURE_ADVANCE ADVANCE=0.05\n"
    verdict = validate_tuning(ok, state, ender3)
    assert verdict.allowed and verdict.lines == 7
    cases = {"M221 S121": "tuning_window", "M220 S49": "tuning_window", "M104 S194": "tuning_window",
             "M104 S226": "tuning_window", "M106 S256": "tuning_window", "SET_PRESSURE_ADVANCE ADVANCE=0.3":
             "tuning_window", "M221": "invalid_command", "M221 S95 X1": "invalid_command",
             "SET_PRESSURE_ADVANCE ADVANCE=0.1 EXTRUDER=x": "invalid_command", "G28": "not_tuning_command",
             "M140 S65": "not_tuning_command", "M302": "forbidden_command", "SAVE_CONFIG": "forbidden_command",
             "M221 S95 (M302)": "hidden_in_comment"}
    for line, rule in cases.items():
        assert validate_tuning(line, state, ender3).rules() == {rule}, line
    # The printer's max_temp caps the window too (ender3: 250 C).
    assert validate_tuning("M104 S250", TuningState(245.0), ender3).allowed
    assert not validate_tuning("M104 S255", TuningState(245.0), ender3).allowed


def test_tuning_batch_size_and_bed_option(ender3: PrinterProfile) -> None:
    nine = "M221 S100\n" * 9
    assert found(validate_tuning(nine, TuningState(210.0), ender3)) == {("not_tuning_command", 9)}
    policy = SafetyPolicy(tuning_commands=["M140", "M221"])
    assert validate_tuning("M140 S65", TuningState(210.0, bed_temp_c=60.0), ender3, policy).allowed
    assert validate_tuning("M140 S75", TuningState(210.0, bed_temp_c=60.0), ender3, policy).rules() == {
        "tuning_window"}


def test_tuning_matches_the_supervisor_windows(ender3: PrinterProfile) -> None:
    supervisor = pytest.importorskip("envs.supervisor")
    policy = SafetyPolicy()
    assert (policy.flow_percent_min, policy.flow_percent_max) == (supervisor.FLOW_PERCENT_MIN,
                                                                  supervisor.FLOW_PERCENT_MAX)
    assert (policy.speed_percent_min, policy.speed_percent_max) == (supervisor.SPEED_PERCENT_MIN,
                                                                    supervisor.SPEED_PERCENT_MAX)
    assert policy.tuning_hotend_step_c == supervisor.HOTEND_TUNE_DELTA_C
    assert policy.tuning_pressure_advance_max_s == supervisor.PRESSURE_ADVANCE_MAX_S
    # The environments train against this validator itself (envs.supervisor.check_tuning calls it).
    lines = ["M221 S80", "M221 S79.9", "M220 S150", "M220 S151", "M104 S195", "M104 S194", "M104 S226",
             "M106 S0", "M106 S255.5", "M107", "M107 S1", "SET_PRESSURE_ADVANCE ADVANCE=0.2", "G1 X1", "M104"]
    allowed = [validate_tuning(line, TuningState(210.0), ender3).allowed for line in lines]
    assert allowed == [True, False, True, False, True, False, False, True, False, True, False, True, False, False]
    assert [bool(supervisor.check_tuning(line, 210.0, ender3).accepted) for line in lines] == allowed


# -- CLI ---------------------------------------------------------------------------------------------------
def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = GOLDEN / "must_allow" / "prusaslicer_ender3_macros_cylinder.gcode"
    bad = GOLDEN / "must_block" / "forbidden_m302.gcode"
    out = tmp_path / "v.json"
    assert main(["check", str(good), "--printer", "ender3-klipper", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["verdict"] == "allow"
    assert main(["check", str(bad), "--printer", "ender3-klipper", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["verdict"] == "block" and data["violations"][0]["rule"] == "forbidden_command"
    assert f"{bad}:13: forbidden_command: M302 is forbidden" in capsys.readouterr().out
    # A Klipper printer.cfg and a profile YAML are printers too.
    assert main(["check", str(bad), "--printer", str(FIXTURES / "klipper" / "ender3.cfg")]) == 1
    assert main(["check", str(good), "--printer", str(_ROOT / "sim_bridge" / "profiles" / "ender3-klipper.yaml")]) == 0


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = GOLDEN / "must_allow" / "prusaslicer_ender3_macros_cylinder.gcode"
    assert main(["check", str(tmp_path / "missing.gcode"), "--printer", "ender3-klipper"]) == 2
    assert "missing.gcode: no such file" in capsys.readouterr().err
    assert main(["check", str(good), "--printer", "no-such-printer"]) == 2
    assert "not a bundled profile" in capsys.readouterr().err
    assert main(["check", str(good)]) == 2
    binary = tmp_path / "image.gcode"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert main(["check", str(binary), "--printer", "ender3-klipper"]) == 1
    assert "unreadable" in capsys.readouterr().out


def test_violation_str() -> None:
    assert str(Violation(3, "M302", "forbidden_command", "never", "M302", "no")) == "3: forbidden_command: no"


def test_stock_prusa_mk3s_start_sequence_is_allowed() -> None:
    """Prusa's stock MK3S start G-code (M862 checks, mesh bed levelling, the 0.75 mm^2 intro line below
    Y=0) on the MK3S profile: no false alarm, and the simulator runs it without failure."""
    path = GOLDEN / "must_allow" / "prusa_mk3s_stock_start.gcode"
    profile = load_printer("mk3s-marlin")
    verdict = validate(path, profile)
    assert verdict.allowed, [str(v) for v in verdict.violations]
    from sim_bridge.simulator import Simulator

    assert not Simulator(profile).run(path.read_text()).failures
    # The same intro line at twice the filament is refused.
    assert not validate(path.read_text().replace("X100.0 E12.5", "X100.0 E25"), profile).allowed
