"""The firmware facts kept once (command table, failure vocabulary, layer markers) and the places that read
them agreeing: evaluation's validity metric and the validator, the simulator and the importer's markers."""

from __future__ import annotations

import pytest

from safety.validator import _Checker, validate
from sim_bridge import failures, simulate
from sim_bridge.commands import (
    ALLOWED,
    AUTOTUNE,
    COMMANDS,
    FORBIDDEN,
    IGNORED,
    UNCHECKED,
    deployable,
    forbidden_reason,
    heater_m_code_target,
    is_motion,
    motors_off_axes,
)
from sim_bridge.interpreter import Interpreter
from sim_bridge.layers import LAYER_MARKERS, is_layer_marker, match_line
from sim_bridge.printers import load_printer
from training.writer_eval import gcode_validity

ENDER3 = load_printer("ender3-klipper")
AUTOTUNE_ARGS = {"M303": " E0 S200", "PID_CALIBRATE": " HEATER=extruder TARGET=200"}


@pytest.mark.parametrize("code", sorted(COMMANDS))
def test_validity_metric_and_validator_read_the_same_table(code: str) -> None:
    entry = COMMANDS[code]
    # A bare command line: the code's class is what is judged (autotune needs a target to be allowed).
    line = code + AUTOTUNE_ARGS.get(code, "")
    verdict = validate(f"{line}\n", ENDER3)
    by_code = verdict.rules() & {failures.FORBIDDEN_COMMAND, failures.UNKNOWN_COMMAND}
    assert bool(by_code) == (not deployable(code)) == (entry.safety in (FORBIDDEN, UNCHECKED))
    assert gcode_validity(f"{line}\n")[0] == deployable(code)
    assert (forbidden_reason(code) is not None) == (entry.safety == FORBIDDEN)


def test_every_table_entry_names_real_methods() -> None:
    for code, entry in COMMANDS.items():
        assert entry.safety in (ALLOWED, AUTOTUNE, FORBIDDEN, UNCHECKED), code
        if entry.effect not in (None, IGNORED):
            assert callable(getattr(Interpreter, entry.effect)), code
        if entry.check:
            assert callable(getattr(_Checker, entry.check)), code
        assert bool(entry.reason) == (entry.safety in (FORBIDDEN, UNCHECKED)), code


def test_g20_and_sd_loops_are_run_by_the_simulator_but_blocked_and_invalid() -> None:
    for code in ("G20", "SDCARD_LOOP_BEGIN"):
        assert COMMANDS[code].safety == UNCHECKED and COMMANDS[code].effect is not None
        assert not gcode_validity(f"{code}\n")[0]
        assert validate(f"{code}\n", ENDER3).rules() == {failures.UNKNOWN_COMMAND}
    inches = simulate("G20\nG28\nG1 X2 F600\n")
    assert inches.final_state["position_mm"][0] == pytest.approx(50.8)
    assert not [n for n in inches.notices if n.kind == failures.UNKNOWN_COMMAND]


def test_motion_and_firmware_word_readings() -> None:
    assert {c for c in COMMANDS if is_motion(c)} == {"G0", "G1", "G2", "G3"}
    assert heater_m_code_target(None, 215.0, klipper=True) == (0.0, False)
    assert heater_m_code_target(200.0, 215.0, klipper=False) == (200.0, False)
    assert heater_m_code_target(None, None, klipper=False) == (None, False)
    assert motors_off_axes({"E"}, klipper=False) == [] and motors_off_axes({"E"}, klipper=True) == [0, 1, 2]
    assert motors_off_axes({"X"}, klipper=False) == [0] and motors_off_axes(set(), klipper=False) == [0, 1, 2]


def test_vocabulary_has_one_spelling_per_fact() -> None:
    names = {v for k, v in vars(failures).items() if k.isupper() and isinstance(v, str)}
    assert all(n.islower() and "-" not in n for n in names)
    assert failures.FATAL_MODES.isdisjoint(failures.DEFECT_MODES | failures.REAL_WORLD_MODES)
    assert {failures.MOVE_OUT_OF_RANGE, failures.MUST_HOME_FIRST} <= failures.VALIDATOR_RULES & failures.FATAL_MODES
    assert failures.classify_klipper_message("!! Must home axis first: 0.000 0.000 0.000 [0.000]") == (
        failures.MUST_HOME_FIRST)
    assert failures.classify_klipper_message("Transition to shutdown state: something new") == (
        failures.FIRMWARE_SHUTDOWN)


@pytest.mark.parametrize(("marker", "family"), [
    (";LAYER_CHANGE", "layer_change"), (";LAYER:3", "cura"), ("; CHANGE_LAYER", "bambu"),
    ("; <layer>", "icesl"), ("(<layer> 0.4 )", "skeinforge")])
def test_every_layer_marker_family_counts_layers_in_the_simulator(marker: str, family: str) -> None:
    found = match_line(marker)
    assert found is not None and found[0].name == family
    program = "G28\nM104 S210\nM109 S210\nG92 E0\nM83\nG1 Z5 F600\nG1 X5 Y5 E0.5 F600\n"  # a purge: layer -1
    for k in range(3):
        program += f"{marker}\nG1 Z{0.2 * (k + 1):.1f}\nG1 X{20 + k} Y20 E1 F1200\nG1 X{20 + k} Y40 E1\n"
    # The purge above the part shows markers, not rising Z, count the layers.
    assert simulate(program).layer_count == 3, family
    assert {f.name for f in LAYER_MARKERS} >= {family}


def test_layer_marker_lookalikes_are_not_markers() -> None:
    assert not is_layer_marker("LAYER_HEIGHT:0.2") and not is_layer_marker("LAYER_COUNT:12")
    assert match_line("G1 X5 ;LAYER_CHANGE") is None
