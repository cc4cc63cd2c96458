"""Printer profiles: bundled YAMLs, validation errors, and imports from Klipper and PrusaSlicer configs."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from conftest import WILD_DIR, needs_wild

from sim_bridge.config import ConfigError
from sim_bridge.klipper_cfg import printer_from_klipper_cfg
from sim_bridge.printers import bundled_printers, load_material, load_printer, printer_from_dict
from sim_bridge.profiles import HeaterProfile, PrinterProfile
from sim_bridge.slicer_config import printer_from_prusaslicer
from sim_bridge.thermal import melt_capacity_mm3_s

FIXTURES = Path(__file__).parent / "fixtures"
KLIPPER_CFG = FIXTURES / "klipper_cfg"
PRUSA = FIXTURES / "prusaslicer"
_ROOT = Path(__file__).resolve().parents[1]

MINIMAL_CFG = """\
[printer]
kinematics: cartesian
max_velocity: 300
max_accel: 3000

[stepper_x]
position_endstop: 0
position_max: 220

[stepper_y]
position_endstop: 0
position_max: 220

[stepper_z]
position_endstop: 0
position_max: 250
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def klipper(tmp_path: Path, extra: str = "", base: str = MINIMAL_CFG) -> PrinterProfile:
    return printer_from_klipper_cfg(write(tmp_path, "printer.cfg", base + textwrap.dedent(extra)))


# --- bundled profiles and YAML validation ------------------------------------------------------------------

def test_bundled_profiles_load():
    names = bundled_printers()
    assert {"ender3-klipper", "corexy300-klipper", "mk3s-marlin"} <= set(names)
    for name in names:
        profile = load_printer(name)
        assert profile.name == name
        assert all(lo < hi for lo, hi in zip(profile.position_min_mm, profile.position_max_mm, strict=True))


def test_bundled_profile_facts():
    ender = load_printer("ender3-klipper")
    assert (ender.firmware, ender.kinematics, ender.bed_size_mm) == ("klipper", "cartesian", (235.0, 235.0))
    assert ender.macro("print_start") is not None and ender.macro("print_start").homes == "XYZ"
    assert load_printer("corexy300-klipper").kinematics == "corexy"
    assert load_printer("mk3s-marlin").firmware == "marlin"


def test_unknown_printer_name_lists_the_bundled_ones():
    with pytest.raises(ConfigError) as info:
        load_printer("no-such-printer")
    assert "no-such-printer" in str(info.value) and "ender3-klipper" in str(info.value)


def yaml_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "printer.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_printer(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


def test_yaml_unknown_key_is_named_with_a_hint(tmp_path):
    message = yaml_error(tmp_path, "name: p\nmax_velocty_mm_s: 300\n")
    assert "max_velocty_mm_s: unknown key" in message
    assert "did you mean 'max_velocity_mm_s'" in message


def test_yaml_unknown_nested_key_is_named_with_its_path(tmp_path):
    message = yaml_error(tmp_path, "hotend:\n  max_temp: 300\n")
    assert "hotend.max_temp: unknown key" in message and "max_temp_c" in message


def test_yaml_unknown_key_in_a_macro(tmp_path):
    message = yaml_error(tmp_path, "macros:\n  - name: PRINT_START\n    home: XYZ\n")
    assert "macros[0].home: unknown key" in message and "'homes'" in message


def test_yaml_out_of_range_names_key_value_and_range(tmp_path):
    message = yaml_error(tmp_path, "max_velocity_mm_s: 9000\n")
    assert "max_velocity_mm_s = 9000.0: out of range, allowed [1.0, 5000.0]" in message


def test_yaml_out_of_range_list_item_and_nested(tmp_path):
    assert "allowed [1.0, 2000.0]" in yaml_error(tmp_path, "position_max_mm: [220, 220, 5000]\n")
    assert "hotend.max_temp_c = 900.0" in yaml_error(tmp_path, "hotend:\n  max_temp_c: 900\n")


def test_yaml_wrong_type_choice_and_empty_range(tmp_path):
    assert "expected a number" in yaml_error(tmp_path, "max_accel_mm_s2: fast\n")
    message = yaml_error(tmp_path, "kinematics: delta\n")
    assert "'delta'" in message and "'cartesian', 'corexy'" in message
    assert "X range [300.0, 200.0] is empty" in yaml_error(
        tmp_path, "position_min_mm: [300, 0, 0]\nposition_max_mm: [200, 200, 200]\n")
    assert "needs 3 values" in yaml_error(tmp_path, "position_max_mm: [200, 200]\n")
    assert "homes = 'X'" in yaml_error(tmp_path, "macros:\n  - name: M\n    homes: X\n")


def test_yaml_not_a_mapping(tmp_path):
    assert "expected a mapping" in yaml_error(tmp_path, "- 1\n- 2\n")


def test_replace_validates():
    profile = load_printer("ender3-klipper")
    assert profile.replace(max_velocity_mm_s=200.0).max_velocity_mm_s == 200.0
    with pytest.raises(ConfigError, match="max_velocity_mm_s"):
        profile.replace(max_velocity_mm_s=0.0)


def test_profile_derived_values():
    profile = printer_from_dict({"nozzle_diameter_mm": 0.6, "min_extrude_temp_c": 180.0})
    assert profile.max_cross_section_mm2 == pytest.approx(4 * 0.36)
    pla = load_material("pla")
    assert melt_capacity_mm3_s(profile, pla, 170.0) == 0.0
    assert melt_capacity_mm3_s(profile, pla, profile.melt_reference_temp_c) == pytest.approx(
        profile.max_volumetric_flow_mm3_s * pla.melt_flow_factor)
    assert load_material("petg").name == "PETG"
    with pytest.raises(ConfigError, match="PLA"):
        load_material("wood")


# --- Klipper printer.cfg ----------------------------------------------------------------------------------

def test_klipper_cfg_with_includes_merges_and_save_config():
    profile = load_printer(KLIPPER_CFG / "include_main.cfg")
    assert profile == printer_from_klipper_cfg(KLIPPER_CFG / "include_main.cfg")
    assert (profile.name, profile.firmware, profile.kinematics) == ("include_main", "klipper", "cartesian")
    assert profile.position_min_mm == [0.0, -3.0, -2.0]
    assert profile.position_max_mm == [235.0, 232.0, 245.0], "the later [stepper_z] overrides the include"
    assert profile.position_endstop_mm == [0.0, -3.0, 0.0]
    assert profile.homing_speed_mm_s == [50.0, 50.0, 5.0], "Klipper's default homing_speed is 5"
    assert profile.minimum_cruise_ratio == pytest.approx(0.3), "1 - max_accel_to_decel / max_accel"
    assert (profile.max_velocity_mm_s, profile.max_accel_mm_s2) == (300.0, 3000.0)
    assert profile.square_corner_velocity_mm_s == 6.5
    assert (profile.max_z_velocity_mm_s, profile.max_z_accel_mm_s2) == (5.0, 100.0)
    assert (profile.nozzle_diameter_mm, profile.filament_diameter_mm) == (0.4, 1.75)
    assert profile.max_extrude_only_distance_mm == 100.0
    assert profile.max_extrude_cross_section_mm2 == 1.2
    assert profile.pressure_advance_s == 0.055
    assert profile.min_extrude_temp_c == 170.0
    hotend, bed = profile.hotend, profile.bed
    assert (hotend.min_temp_c, hotend.max_temp_c) == (0.0, 260.0)
    assert (hotend.pid_kp, hotend.pid_ki, hotend.pid_kd) == (23.456, 1.234, 111.111), "SAVE_CONFIG wins"
    assert (hotend.max_error_c_s, hotend.check_gain_time_s, hotend.hysteresis_c, hotend.heating_gain_c) == (
        90.0, 25.0, 4.0, 3.0)
    assert (bed.max_temp_c, bed.max_power, bed.pid_kp, bed.pid_kd) == (110.0, 0.8, 70.0, 800.0)
    assert bed.check_gain_time_s == 60.0, "verify_heater default for the bed"
    # What a printer.cfg cannot tell stays at the defaults.
    assert (hotend.power_w, hotend.heat_capacity_j_per_k) == (HeaterProfile().power_w,
                                                              HeaterProfile().heat_capacity_j_per_k)
    assert (bed.power_w, bed.heat_capacity_j_per_k) == (PrinterProfile().bed.power_w,
                                                        PrinterProfile().bed.heat_capacity_j_per_k)


def test_klipper_cfg_with_print_start_macro():
    profile = printer_from_klipper_cfg(KLIPPER_CFG / "print_start.cfg")
    assert profile.kinematics == "corexy"
    assert profile.position_endstop_mm == [300.0, 305.0, 1.25], "Z homes on the probe: its z_offset"
    assert profile.position_min_mm[2] == -5.0
    assert profile.homing_retract_mm == 8.0
    assert profile.minimum_cruise_ratio == 0.4
    assert (profile.max_z_velocity_mm_s, profile.max_z_accel_mm_s2) == (15.0, 350.0)
    assert profile.min_extrude_temp_c == 180.0
    assert profile.hotend.pid_kp == HeaterProfile().pid_kp, "watermark control: PID gains unused"
    start = profile.macro("print_start")
    assert start is not None
    assert start.homes == "XYZ"
    assert start.hotend_temp_params == ["EXTRUDER", "HOTEND"]
    assert start.bed_temp_params == ["BED"]
    assert (start.default_hotend_temp_c, start.default_bed_temp_c) == (210.0, 60.0)
    assert start.waits_for_temperature and start.levels
    assert start.purges, "through the _PURGE_LINE macro it calls"
    assert not start.ends_print
    end = profile.macro("PRINT_END")
    assert end.ends_print and not end.purges and end.homes == ""
    assert end.park_position_mm == [150.0, 300.0]
    assert profile.macro("HOME_Z").homes == "Z"
    soak = profile.macro("heat_soak")
    assert soak.bed_temp_params == ["TEMP"] and soak.default_bed_temp_c == 100.0
    assert not soak.waits_for_temperature and soak.hotend_temp_params == []


def test_klipper_missing_required_key_names_file_line_section_and_key():
    path = KLIPPER_CFG / "bad_corexy_no_position_max.cfg"
    with pytest.raises(ConfigError) as info:
        printer_from_klipper_cfg(path)
    assert str(info.value) == f"{path}:11: [stepper_y] position_max: required key is missing"


def test_klipper_unsupported_kinematics():
    path = KLIPPER_CFG / "delta.cfg"
    with pytest.raises(ConfigError) as info:
        load_printer(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: [printer] kinematics = delta: ")
    assert "allowed: cartesian, corexy" in message


def test_klipper_include_cycle_is_an_error():
    with pytest.raises(ConfigError, match=r"cycle_b\.cfg:1: \[include cycle_a\.cfg\]: recursive include"):
        printer_from_klipper_cfg(KLIPPER_CFG / "cycle_a.cfg")


def test_klipper_same_file_included_twice_is_not_a_cycle(tmp_path):
    write(tmp_path, "part.cfg", "[gcode_macro HELLO]\ngcode:\n  M117 hi\n")
    profile = klipper(tmp_path, "[include part.cfg]\n[include part.cfg]\n")
    assert [m.name for m in profile.macros] == ["HELLO"]


def test_klipper_glob_include_and_missing_include(tmp_path):
    write(tmp_path, "macros/a.cfg", "[gcode_macro A]\ngcode:\n  G28\n")
    write(tmp_path, "macros/b.cfg", "[gcode_macro B]\ngcode:\n  M84\n")
    profile = klipper(tmp_path, "[include macros/*.cfg]\n[include nothing/*.cfg]\n")
    assert (profile.macro("A").homes, profile.macro("B").ends_print) == ("XYZ", True)
    with pytest.raises(ConfigError, match=r"printer\.cfg:\d+: \[include missing\.cfg\]: file .* does not exist"):
        klipper(tmp_path, "[include missing.cfg]\n")


@pytest.mark.parametrize(("extra", "expected"), [
    ("[printer]\nmax_velocity: fast\n", "[printer] max_velocity = fast: expected a number"),
    ("[printer]\nmax_velocity: 9000\n", "[printer] max_velocity = 9000: out of range, allowed [1.0, 5000.0]"),
    ("[stepper_x]\nposition_endstop: 300\n", "[stepper_x] position_endstop = 300: must be between position_min"),
    ("[extruder]\nnozzle_diameter: 0.4\nfilament_diameter: 1.75\nmin_temp: 0\n",
     "[extruder] max_temp: required key is missing"),
    ("[extruder]\nnozzle_diameter: 0.4\nfilament_diameter: 1.75\nmin_temp: 0\nmax_temp: 280\ncontrol: bangbang\n",
     "[extruder] control = bangbang: unknown control, allowed: pid, watermark"),
    ("[heater_bed]\nmin_temp: 0\nmax_temp: 900\n",
     "[heater_bed] max_temp = 900: out of range, allowed [40.0, 500.0]"),
    ("[printer]\nmax_accel_to_decel: 10\n", "max_accel_to_decel = 10: minimum_cruise_ratio"),
])
def test_klipper_bad_values_name_file_line_key_value(tmp_path, extra, expected):
    with pytest.raises(ConfigError) as info:
        klipper(tmp_path, "\n" + extra)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'printer.cfg'}:"), message
    assert expected in message


def test_klipper_macro_value_out_of_profile_range_names_the_macro(tmp_path):
    with pytest.raises(ConfigError) as info:
        klipper(tmp_path, "\n[gcode_macro HOT_BED]\ngcode:\n  M190 S{params.BED|default(250)}\n")
    assert str(info.value) == (f"{tmp_path / 'printer.cfg'}:18: [gcode_macro HOT_BED]: "
                               "macros[0].default_bed_temp_c = 250.0: out of range, allowed [0.0, 200.0]")


def test_klipper_bad_value_in_an_include_names_the_included_file(tmp_path):
    write(tmp_path, "extra.cfg", "\n\n[printer]\nmax_accel: lots\n")
    with pytest.raises(ConfigError) as info:
        klipper(tmp_path, "[include extra.cfg]\n")
    assert str(info.value) == f"{tmp_path / 'extra.cfg'}:4: [printer] max_accel = lots: expected a number"


def test_klipper_structure_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"no \[printer\] section"):
        printer_from_klipper_cfg(write(tmp_path, "empty.cfg", "# nothing\n"))
    with pytest.raises(ConfigError, match=r"nope\.cfg: no such config file"):
        printer_from_klipper_cfg(tmp_path / "nope.cfg")
    with pytest.raises(ConfigError, match=r"outside.cfg:1: 'max_velocity: 3' is outside any \[section\]"):
        printer_from_klipper_cfg(write(tmp_path, "outside.cfg", "max_velocity: 3\n"))
    with pytest.raises(ConfigError, match=r"junk.cfg:2: cannot read 'just words'"):
        printer_from_klipper_cfg(write(tmp_path, "junk.cfg", "[printer]\njust words\n"))


def test_klipper_comment_rules(tmp_path):
    # '#' starts a comment anywhere; ';' only after whitespace (as klippy and configparser read them).
    profile = klipper(tmp_path, base=MINIMAL_CFG.replace("max_velocity: 300", "max_velocity: 250#fast")
                      .replace("max_accel: 3000", "max_accel = 2500 ; note"))
    assert (profile.max_velocity_mm_s, profile.max_accel_mm_s2) == (250.0, 2500.0)


def test_klipper_z_defaults_follow_the_toolhead(tmp_path):
    profile = klipper(tmp_path)
    assert (profile.max_z_velocity_mm_s, profile.max_z_accel_mm_s2) == (300.0, 3000.0)
    assert profile.square_corner_velocity_mm_s == 5.0 and profile.minimum_cruise_ratio == 0.5
    assert profile.macros == []


MACRO_CASES = [
    ("G28 X Y", "homes", "XY"),
    ("G28 X", "homes", ""),              # under-reported: X alone is none of XYZ, XY, Z
    ("G28 Z", "homes", "Z"),
    ("G28\nM84", "ends_print", True),
    ("M104 S0\nM140 S0", "bed_temp_params", []),
    ("M104 S0\nM140 S0", "default_bed_temp_c", 0.0),
    ("M109 S{params.T|default(215)}", "hotend_temp_params", ["T"]),
    ("M109 S{params.T|default(215)}", "default_hotend_temp_c", 215.0),
    ("M190 S65", "default_bed_temp_c", 65.0),
    ("M190 S{params.get('BED', 55)|float}", "bed_temp_params", ["BED"]),
    ("M190 S{params.get('BED', 55)|float}", "default_bed_temp_c", 55.0),
    ("SET_HEATER_TEMPERATURE HEATER=heater_bed TARGET={params['BED_TEMP']}", "bed_temp_params", ["BED_TEMP"]),
    ("SET_HEATER_TEMPERATURE HEATER=heater_bed TARGET=60", "waits_for_temperature", False),
    ("TEMPERATURE_WAIT SENSOR=heater_bed MINIMUM=60", "waits_for_temperature", True),
    ("QUAD_GANTRY_LEVEL", "levels", True),
    ("Z_TILT_ADJUST", "levels", True),
    ("G29", "levels", True),
    ("BED_MESH_PROFILE LOAD=default", "levels", False),
    ("LINE_PURGE", "purges", True),       # KAMP's macro, defined elsewhere
    ("G1 X10 Y10 F3000\nG1 E5", "purges", False),
    ("G1 X10 E10", "purges", True),
    ("TURN_OFF_HEATERS\nG1 X0 Y200", "park_position_mm", [0.0, 200.0]),
]


@pytest.mark.parametrize(("gcode", "field", "expected"), MACRO_CASES)
def test_klipper_macro_inference(tmp_path, gcode, field, expected):
    body = "\n".join(f"    {line}" for line in gcode.split("\n"))
    profile = klipper(tmp_path, f"\n[gcode_macro M]\ngcode:\n{body}\n")
    assert getattr(profile.macro("M"), field) == expected


def test_klipper_macro_call_renames_params(tmp_path):
    profile = klipper(tmp_path, """
        [gcode_macro START]
        gcode:
          _HEAT BED={params.BED_TEMP|default(75)} HOT={params.NOZZLE}
          _HOME

        [gcode_macro _HEAT]
        gcode:
          M190 S{params.BED|default(60)}
          M109 S{params.HOT|default(205)}

        [gcode_macro _HOME]
        gcode:
          G28
          START
        """)
    start = profile.macro("START")
    assert start.bed_temp_params == ["BED_TEMP"] and start.hotend_temp_params == ["NOZZLE"]
    assert (start.default_bed_temp_c, start.default_hotend_temp_c) == (75.0, 205.0), "caller's default wins"
    assert start.homes == "XYZ" and start.waits_for_temperature
    assert profile.macro("_HOME").homes == "XYZ", "recursion between macros stops"


# --- PrusaSlicer configs ----------------------------------------------------------------------------------

def test_prusaslicer_ini_marlin_mk3s():
    profile = load_printer(PRUSA / "mk3s_marlin.ini")
    assert (profile.name, profile.firmware, profile.kinematics) == ("mk3s_marlin", "marlin", "cartesian")
    assert (profile.position_min_mm, profile.position_max_mm) == ([0.0, 0.0, 0.0], [250.0, 210.0, 210.0])
    assert profile.max_feedrate_mm_s == [200.0, 200.0, 12.0, 120.0]
    assert profile.max_axis_accel_mm_s2 == [1000.0, 1000.0, 200.0, 5000.0]
    assert profile.jerk_mm_s == [8.0, 8.0, 0.4, 4.5]
    assert (profile.print_accel_mm_s2, profile.retract_accel_mm_s2, profile.travel_accel_mm_s2) == (
        1250.0, 1250.0, 1250.0)
    assert (profile.nozzle_diameter_mm, profile.filament_diameter_mm) == (0.4, 1.75)


def test_prusaslicer_ini_ender3():
    profile = printer_from_prusaslicer(PRUSA / "ender3_klipper.ini")
    assert profile.position_max_mm == [220.0, 220.0, 250.0]
    assert profile.firmware == "marlin", "gcode_flavor = marlin"
    assert (profile.max_velocity_mm_s, profile.max_accel_mm_s2) == (300.0, 3000.0)
    assert profile.jerk_mm_s == [8.0, 8.0, 0.4, 5.0]


@pytest.mark.parametrize(("ini", "gcode"), [("mk3s_marlin.ini", "cube20_mk3s.gcode"),
                                            ("ender3_klipper.ini", "cube20_ender3.gcode")])
def test_prusaslicer_gcode_dump_matches_its_ini(ini, gcode):
    from_ini = printer_from_prusaslicer(PRUSA / ini)
    from_gcode = load_printer(PRUSA / gcode)
    assert from_gcode.name == Path(gcode).stem
    assert from_gcode.replace(name=from_ini.name, description=from_ini.description) == from_ini


WILD_EXPECTED = {
    # file: (firmware, kinematics, position_min, position_max, max_velocity, max_accel, extra checks)
    "14_slic3r_1.3.1dev.gcode": ("marlin", "cartesian", [0, 0, 0], [200, 200, 250], 300, 3000, {}),
    "15_slic3rpe_1.36_duplo.gcode": ("marlin", "cartesian", [0, 0, 0], [215, 215, 250], 300, 3000, {}),
    "16_arcwelder_slic3rpe_benchy.gcode": ("marlin", "cartesian", [0, 0, 0], [200, 200, 250], 300, 3000, {}),
    "17_prusaslicer_2.4a1_m486.gcode": ("marlin", "cartesian", [0, 0, 0], [300, 300, 300], 500, 1500, {
        "travel_accel_mm_s2": 1500.0, "max_volumetric_flow_mm3_s": 11.0,
        "max_axis_accel_mm_s2": [9000.0, 9000.0, 500.0, 10000.0]}),
    "19_prusaslicer_2.6_minicube.gcode": ("marlin", "cartesian", [0, 0, 0], [180, 180, 180], 180, 2000, {
        "max_feedrate_mm_s": [180.0, 180.0, 12.0, 80.0], "retract_accel_mm_s2": 1250.0,
        "travel_accel_mm_s2": 2500.0, "jerk_mm_s": [8.0, 8.0, 2.0, 10.0], "max_volumetric_flow_mm3_s": 7.0}),
    "20_prusaslicer_2.7.4_vase.gcode": ("marlin", "cartesian", [5, 0, 0], [215, 220, 250], 500, 500, {
        "position_endstop_mm": [5.0, 0.0, 0.0]}),
    "21_prusaslicer_2.8.1_minicube.gcode": ("marlin", "cartesian", [0, 0, 0], [250, 210, 220], 300, 4000, {
        "max_feedrate_mm_s": [300.0, 300.0, 40.0, 100.0], "max_z_velocity_mm_s": 40.0,
        "max_volumetric_flow_mm3_s": 15.0}),
    "22_superslicer_2.3.56.gcode": ("klipper", "cartesian", [0, 0, 0], [300, 300, 300], 500, 1500, {
        "max_volumetric_flow_mm3_s": 11.0}),
    "24_bambustudio_1.10_k1max.gcode": ("klipper", "corexy", [0, 0, 0], [300, 300, 300], 1000, 20000, {
        "max_z_accel_mm_s2": 500.0, "jerk_mm_s": [5.0, 5.0, 2.0, 2.5], "max_volumetric_flow_mm3_s": 12.0}),
    "25_bambustudio_2.04_a1mini.gcode": ("marlin", "cartesian", [0, 0, 0], [180, 180, 180], 500, 20000, {
        "max_volumetric_flow_mm3_s": 3.2, "travel_accel_mm_s2": 9000.0}),
    "26_crealityprint_5.1.4.gcode": ("klipper", "cartesian", [0, 0, 0], [300, 300, 300], 800, 20000, {
        "max_volumetric_flow_mm3_s": 23.0}),
}


@needs_wild
@pytest.mark.parametrize("name", sorted(WILD_EXPECTED))
def test_prusaslicer_import_of_real_gcode_dumps(name):
    firmware, kinematics, lows, highs, velocity, accel, extra = WILD_EXPECTED[name]
    profile = printer_from_prusaslicer(WILD_DIR / name)
    assert profile.name == Path(name).stem
    assert (profile.firmware, profile.kinematics) == (firmware, kinematics)
    assert profile.position_min_mm == [float(v) for v in lows]
    assert profile.position_max_mm == [float(v) for v in highs]
    assert (profile.max_velocity_mm_s, profile.max_accel_mm_s2) == (velocity, accel)
    assert (profile.nozzle_diameter_mm, profile.filament_diameter_mm) == (0.4, 1.75)
    for key, value in extra.items():
        assert getattr(profile, key) == value, key


@needs_wild
@pytest.mark.parametrize("name", ["01_klipper_move.gcode", "13_cura_5.9.1_k1max.gcode",
                                  "23_orcaslicer_2.3.0b2_k1max.gcode", "30_kisslicer_1.6.3.gcode"])
def test_gcode_without_a_slicer_config_is_an_error(name):
    path = WILD_DIR / name
    with pytest.raises(ConfigError) as info:
        printer_from_prusaslicer(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no slicer config found")
    assert "bed_shape" in message and "prusaslicer_config = begin" in message and "CONFIG_BLOCK_START" in message


def test_prusaslicer_hotend_limit_covers_the_configs_own_targets(tmp_path):
    path = write(tmp_path, "hot.ini", "bed_shape = 0x0,200x0,200x200,0x200\ntemperature = 285,280\n"
                 "first_layer_temperature = 290\nbed_temperature = 135\n")
    profile = printer_from_prusaslicer(path)
    assert profile.hotend.max_temp_c == 290.0
    assert profile.bed.max_temp_c == 135.0
    cool = printer_from_prusaslicer(write(tmp_path, "cool.ini", "bed_shape = 0x0,200x0,200x200,0x200\n"
                                                                "temperature = 200\n"))
    assert cool.hotend.max_temp_c == HeaterProfile().max_temp_c, "never lowered below the default"


def test_prusaslicer_orca_keys_and_bed_offsets(tmp_path):
    path = write(tmp_path, "orca.ini", """\
        printable_area = -90x-90,90x-90,90x90,-90x90
        printable_height = 200
        gcode_flavor = klipper
        printer_structure = corexy
        machine_max_speed_x = 600,200
        machine_max_speed_y = 700,200
        machine_max_acceleration_x = 8000
        filament_diameter = 2.85;2.85
        """)
    profile = printer_from_prusaslicer(path)
    assert profile.position_min_mm == [-90.0, -90.0, 0.0]
    assert profile.position_max_mm == [90.0, 90.0, 200.0]
    assert (profile.firmware, profile.kinematics) == ("klipper", "corexy")
    assert profile.max_velocity_mm_s == 700.0, "the faster of X and Y"
    assert profile.max_accel_mm_s2 == 8000.0, "no extruding acceleration: X's"
    assert profile.filament_diameter_mm == 2.85


@pytest.mark.parametrize(("line", "expected"), [
    ("machine_max_feedrate_x = fast", "machine_max_feedrate_x = fast: expected a number"),
    ("machine_max_acceleration_extruding = 0", "machine_max_acceleration_extruding = 0: out of range, allowed [1.0"),
    ("nozzle_diameter = 9", "nozzle_diameter = 9: out of range, allowed [0.05, 3.0]"),
    ("bed_shape = round", "bed_shape = round: expected corner points like"),
    ("bed_shape = 0x0,0x0,0x0", "bed_shape = 0x0,0x0,0x0: the bed polygon has no area"),
])
def test_prusaslicer_bad_values_name_file_line_key_value(tmp_path, line, expected):
    text = "# generated by PrusaSlicer\nbed_shape = 0x0,200x0,200x200,0x200\ngcode_flavor = marlin\n" + line + "\n"
    path = write(tmp_path, "bad.ini", text)
    with pytest.raises(ConfigError) as info:
        printer_from_prusaslicer(path)
    assert str(info.value).startswith(f"{path}:4: {expected}"), "a later key wins over line 2's"


def test_prusaslicer_value_out_of_a_derived_range_names_its_source_key(tmp_path):
    path = write(tmp_path, "fastz.ini", "bed_shape = 0x0,200x0,200x200,0x200\nmachine_max_feedrate_z = 2000\n")
    with pytest.raises(ConfigError) as info:
        printer_from_prusaslicer(path)
    assert str(info.value) == (f"{path}:2: machine_max_feedrate_z = 2000: max_z_velocity_mm_s = 2000.0: "
                               "out of range, allowed [0.1, 1000.0]")


def test_prusaslicer_bad_value_in_a_gcode_dump_names_its_line(tmp_path):
    body = "G28\n" + "G1 X10 Y10 E0.1\n" * 5000
    dump = "; prusaslicer_config = begin\n; bed_shape = 0x0,200x0,200x200,0x200\n; nozzle_diameter = big\n" \
           "; prusaslicer_config = end\n"
    path = write(tmp_path, "sliced.gcode", body + "; filament used [mm] = 1\n\n" + dump)
    with pytest.raises(ConfigError) as info:
        printer_from_prusaslicer(path)
    assert str(info.value) == f"{path}:5006: nozzle_diameter = big: expected a number"


def test_prusaslicer_structure_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        printer_from_prusaslicer(tmp_path / "missing.gcode")
    bundle = write(tmp_path, "bundle.ini", "[printer:My Printer]\nbed_shape = 0x0,1x0,1x1\n")
    with pytest.raises(ConfigError, match=r"bundle\.ini:1: \[printer:My Printer\]: a config bundle"):
        printer_from_prusaslicer(bundle)
    with pytest.raises(ConfigError, match=r"notes\.ini: not a slicer printer config"):
        printer_from_prusaslicer(write(tmp_path, "notes.ini", "colour = red\n"))
    with pytest.raises(ConfigError, match=r"words\.ini:1: cannot read 'hello world'"):
        printer_from_prusaslicer(write(tmp_path, "words.ini", "hello world\n"))


def test_prusaslicer_reads_only_the_ends_of_a_huge_gcode(tmp_path):
    path = tmp_path / "huge.gcode"
    dump = b"\nM84\n; prusaslicer_config = begin\n; bed_shape = 0x0,123x0,123x123,0x123\n" \
           b"; prusaslicer_config = end\n"
    with path.open("wb") as fh:
        fh.write(b"G28\n")
        fh.truncate(8 * 1024**3)  # 8 GiB of zeros, stored as a hole where the file system allows
        fh.seek(0, os.SEEK_END)
        fh.write(dump)
    if path.stat().st_blocks * 512 > 64 * 1024**2:
        pytest.skip("this file system does not store sparse files")
    start = time.perf_counter()
    profile = printer_from_prusaslicer(path)
    assert time.perf_counter() - start < 2.0
    assert profile.position_max_mm[:2] == [123.0, 123.0]
