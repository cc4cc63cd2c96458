"""The Prunt client and the ``prunt`` backend against a replay of the real Prunt's recorded responses
(:mod:`prunt_replay`: Prunt cannot run here; ``shared/data/prunt`` holds what it answered)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401 - registers the environments
from sim_bridge import failures as fail
from sim_bridge.__main__ import main
from sim_bridge.backends import BACKENDS, OFFLINE_BACKENDS, simulate
from sim_bridge.config import ConfigError
from sim_bridge.prunt import PrintTimeout, PruntClient, PruntError, PruntLog, parse_log_error, run_to_end

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prunt_replay import PruntReplay, prunt_data_dir  # noqa: E402 - the replay lives beside the tests

DATA = prunt_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "http" / "transcript.json").is_file() and not os.environ.get("CI"),
                                reason=f"Prunt recordings not found at {DATA} (set LAYERLOOP_PRUNT_DATA)")
GOOD = "G28\nG90\nM83\nG1 Z0.2 F600\nG1 X10 Y10 F6000\nG1 X20 Y20\n"


@pytest.fixture
def replay() -> Iterator[PruntReplay]:
    # A fresh replay per test (a fatal error kills its G-code task); the context manager always stops it.
    with PruntReplay(DATA) as server:
        yield server


def _wait(predicate: object, limit_s: float = 3.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_upload_run_and_finished_status(replay: PruntReplay) -> None:
    client = PruntClient(replay.url)
    assert client.status().file_name == "<NO FILE>"
    run = run_to_end(client, "good.gcode", GOOD.encode(), timeout_s=5)
    assert run.status.finished == "good.gcode" and run.status.position_mm == (20.0, 20.0, 0.2, 0.0)
    assert run.errors == [] and run.followed_by == "websocket" and run.wall_time_s > 0
    assert client.uploads() == ["good.gcode"] and client.download("good.gcode") == GOOD.encode()
    # What went over the wire: the file as the PUT body, its bare name as run-file's.
    assert ("PUT", "/uploads/good.gcode", GOOD.encode()) in replay.requests
    assert ("POST", "/run-file", b"good.gcode") in replay.requests
    # The same name again: Prunt's status already says it finished, so the second run gets a name of its own.
    again = run_to_end(client, "good.gcode", GOOD.encode(), timeout_s=5)
    assert again.name != "good.gcode" and again.status.finished == again.name


def test_bad_line_is_prunts_error_at_its_line(replay: PruntReplay) -> None:
    run = run_to_end(PruntClient(replay.url), "bad.gcode", b"G28\nG1 X10\nG2 X10 Y10 I5 J0\nG1 X20\n", 5)
    # Prunt says finished, as after a clean run; only the log has the error, and the rest was skipped.
    assert run.status.finished == "bad.gcode" and run.status.position_mm[0] == 10.0
    (error,) = run.errors
    assert (error.file, error.line, error.exception, error.error) == ("bad.gcode", 3, "BAD_LINE",
                                                                      "Unknown G code:  2")
    assert error.message.startswith("Error parsing line in file uploads/bad.gcode on line  3 (G2 X10 Y10 I5 J0)")


def test_run_command_error_only_in_the_log(replay: PruntReplay) -> None:
    client = PruntClient(replay.url)
    with PruntLog(client.websocket_url) as log:
        client.run_command("G28")
        client.run_command("G1 X5 X6")  # 204, as recorded: the error goes to the log only
        _wait(lambda: log.messages())
    error = parse_log_error(log.messages()[0])
    assert error is not None and error.file is None and error.gcode == "G1 X5 X6"
    assert error.error == "Parameter letter 'X' encountered more than once on line."
    assert parse_log_error("Setup done.") is None


def test_pause_then_resume(replay: PruntReplay) -> None:
    replay.seconds_per_line = 0.02
    client = PruntClient(replay.url)
    client.upload("slow.gcode", "G28\n" + "G1 X1 F600\nG1 X2\n" * 10)
    client.run_file("slow.gcode")
    _wait(lambda: client.status().running == "slow.gcode")
    client.pause()
    paused = client.status()
    assert paused.paused and paused.running == "slow.gcode"
    time.sleep(0.1)
    # As recorded: while paused the position stays where the motion came to rest.
    still = client.status()
    assert still.paused and (still.position_mm, still.file_line) == (paused.position_mm, paused.file_line)
    client.resume()
    assert not client.status().paused
    _wait(lambda: client.status().finished == "slow.gcode")


def test_config_values_and_schema(replay: PruntReplay) -> None:
    client = PruntClient(replay.url)
    values = client.config_values()
    assert values["Kinematics$Upper position limit$X_AXIS"] == 220.0 and values["Prunt$Replace G0 with G1"]
    assert "Prunt" in client.config_schema()
    # POST /config/values was not recorded: the replay patches the values (see prunt_replay).
    changed = client.set_config_values({"Kinematics$Upper position limit$X_AXIS": 200.0})
    assert changed["Kinematics$Upper position limit$X_AXIS"] == 200.0
    with pytest.raises(PruntError, match="config refused: No such key"):
        client.set_config_values({"No such key": 1})


def test_http_errors_are_prunt_errors(replay: PruntReplay) -> None:
    client = PruntClient(replay.url)
    with pytest.raises(PruntError, match=r"/uploads/missing.gcode: 404: File not found\.") as missing:
        client.download("missing.gcode")
    assert missing.value.status == 404 and missing.value.url == f"{replay.url}/uploads/missing.gcode"
    with pytest.raises(PruntError, match="413: request body over Prunt's 100000-byte buffer") as too_large:
        client.run_command("G1 X5 ; " + "a" * 120_000)
    assert too_large.value.status == 413
    with pytest.raises(ValueError, match="plain file name"):
        client.upload("other/x.gcode", "G28\n")
    with socket.socket() as probe:  # a port just freed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PruntError, match=f"127.0.0.1:{port}/status/values: no answer") as refused:
        PruntClient(f"http://127.0.0.1:{port}", timeout_s=2).status()
    assert refused.value.status == 0


def test_a_hanging_file_times_out_and_keeps_prunt_busy(replay: PruntReplay) -> None:
    client = PruntClient(replay.url)
    # As recorded on prunt_simulator: M109 waits for a thermistor report that never comes.
    with pytest.raises(PrintTimeout, match="Prunt has no cancel"):
        run_to_end(client, "wait.gcode", b"G28\nM109 S200\nG1 X5\n", timeout_s=0.3)
    with pytest.raises(PruntError, match="busy: running uploads/wait.gcode"):
        run_to_end(client, "next.gcode", GOOD.encode(), timeout_s=1)


@pytest.mark.parametrize(("program", "mode", "line"), [
    ("G28\nG1 X10 F6000\nG2 X10 Y10 I5 J0\nG1 X20\nG1 X30\n", fail.INVALID_COMMAND, 3),
    ("G28\nG1 X10 F6000\nG1 X-5\nG1 X20\n", fail.MOVE_OUT_OF_RANGE, 3),
    ("G28\nM84\nG1 X5 F6000\n", fail.MUST_HOME_FIRST, 3),
])
def test_backend_reports_prunts_first_error(replay: PruntReplay, program: str, mode: str, line: int) -> None:
    report = simulate(program, "ender3-klipper", backend="prunt", url=replay.url, timeout_s=5)
    assert not report.success and report.backend == "prunt" and report.stopped_at_line == line
    first = report.failures[0]
    assert (first.mode, first.line, first.fatal, first.source) == (mode, line, True, "prunt")
    assert first.message.startswith("Error ") and f"on line  {line} " in first.message
    assert report.final_state["position_mm"][0] == 10.0 or mode == fail.MUST_HOME_FIRST
    skipped = [n for n in report.notices if n.kind == fail.STOPPED and n.source == "prunt"]
    assert bool(skipped) == (line < len(program.splitlines()))


def test_backend_success_and_sources(replay: PruntReplay) -> None:
    report = simulate(GOOD, "ender3-klipper", backend="prunt", url=replay.url, timeout_s=5)
    assert report.success, report.summary()
    assert report.source("print_time_s") == "prunt" and report.source("layers") == "embedded"
    assert report.print_time_s == report.final_state["wall_time_s"] > 0
    assert report.final_state["position_mm"] == [20.0, 20.0, 0.2, 0.0]
    assert report.final_state["followed_by"] == "websocket" and report.final_state["embedded_print_time_s"] > 0


def test_backend_fatal_error(replay: PruntReplay) -> None:
    report = simulate("G28\nM141 S40\nG1 X5\n", "ender3-klipper", backend="prunt", url=replay.url, timeout_s=5)
    first = report.failures[0]
    assert not report.success and first.fatal and first.source == "prunt"
    assert (first.mode, first.message) == (fail.INVALID_COMMAND, "raised CONSTRAINT_ERROR : Command not implemented.")
    assert report.final_state["fatal_error"].startswith("raised CONSTRAINT_ERROR")
    with pytest.raises(PruntError, match="G-code task has died"):
        simulate(GOOD, "ender3-klipper", backend="prunt", url=replay.url, timeout_s=5)


def test_backend_is_named_needs_a_url_and_moves_a_machine() -> None:
    assert "prunt" in BACKENDS and "prunt" not in OFFLINE_BACKENDS
    with pytest.raises(ConfigError, match="8080"):
        simulate(GOOD, "ender3-klipper", backend="prunt")
    with pytest.raises(ConfigError, match="no API keys"):
        simulate(GOOD, "ender3-klipper", backend="prunt", url="http://127.0.0.1:1", api_key="k")


def test_cli_and_env(tmp_path: Path) -> None:
    gcode, out = tmp_path / "good.gcode", tmp_path / "report.json"
    gcode.write_text(GOOD)
    # A Prunt whose heaters reach their targets (the job's set-up waits with M190/M109).
    with PruntReplay(DATA, heater_waits_return=True) as replay:
        code = main(["simulate", str(gcode), "--backend", "prunt", "--url", replay.url, "--json", str(out),
                     "--quiet"])
        assert code == 0 and json.loads(out.read_text())["backend"] == "prunt"
        env = gym.make("layerloop/GcodeProgram-v0", backend="prunt", url=replay.url)
        try:
            env.reset(seed=0)
            good = env.unwrapped.expert_action()
            _, _, _, _, info = env.step(good)
            assert info["backend"] == "prunt" and info["backend_success"] and not info["fatal"]
            env.reset(seed=0)
            bad = good + "G1 X400 Y10 F3000\n"
            _, _, _, _, info = env.step(bad)
            prunt = [f for f in info["backend_failures"] if f["source"] == "prunt"]
            assert info["fatal"] and prunt[0]["mode"] == fail.MOVE_OUT_OF_RANGE
            assert prunt[0]["line"] == len(bad.splitlines()) and "X_AXIS =  4.00000000000000E+02" in prunt[0]["message"]
        finally:
            env.close()
    with pytest.raises(ConfigError, match="needs the printer's URL"):
        gym.make("layerloop/GcodeProgram-v0", backend="prunt")
