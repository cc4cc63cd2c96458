"""``python -m safety.deploy`` against the real stack: Klippy + Moonraker + the virtual MCU, with the printer's
dead-man switch installed. Never skipped.

One printer for the module (ender3 with the virtual-MCU tests' fast hotend, held at 200 °C, an API key).
Each test checks what the printer says (Moonraker's file list, history, print state), not only our exit
code. The fault tests run the ``full`` stage of the program the staged test approved and confirmed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import tls_proxy
from conftest import FIXTURES, ROOT
from test_virtual_mcu import fast_hotend, wait_for

from agent.live_supervisor import RuleLiveSupervisor
from safety.approvals import ApprovalStore
from safety.deploy import credentials, deadman, run
from safety.deploy.config import DeployConfig
from safety.deployments import DeploymentStore
from safety.gate import CONFIRMED, FIRST_LAYER_STOP, GateLog
from sim_bridge.moonraker import MoonrakerClient, MoonrakerError
from sim_bridge.moonraker_watch import TelemetryWatcher
from sim_bridge.printers import load_material
from sim_bridge.virtual_printer import VirtualPrinter

PROGRAM = FIXTURES / "deploy" / "square10.gcode"
KEY = "deploy-test-key-7f3a"
POLICY_YAML = """\
speed_percent_min: 95.0
watchdog_heater_deviation_c: 10.0
watchdog_heater_deviation_s: 2.0
watchdog_telemetry_timeout_s: 3.0
"""
"""Tight windows: the rule's slow-down (M220 S≈88) is refused, its +10 °C (M104 S210) accepted; fast watchdogs."""


@pytest.fixture(scope="module")
def vp() -> Iterator[VirtualPrinter]:
    printer = VirtualPrinter(fast_hotend(), api_key=KEY, start_temps_c={"extruder": 200.0},
                             extra_cfg=deadman.DEADMAN_CFG)
    printer.start()
    try:
        yield printer
    finally:
        printer.stop()


@pytest.fixture(autouse=True)
def preheated(vp: VirtualPrinter) -> None:
    """The hotend held at the job's 200 °C between prints, as an operator preheats a printer: each print's
    ``M109`` then settles in seconds instead of reheating from cold (the heating itself is tested in
    ``test_virtual_mcu``)."""
    vp.client.gcode_script("M104 S200")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deploy") / "approvals.db"
    store = ApprovalStore(path)
    store.accounts.add_user("rita", "reviewer-password-1")
    program_id = store.submit(PROGRAM.read_bytes(), printer="ender3-klipper", job="square10", submitted_by="sam")
    store.decide(program_id, "rita", "approve", "looks right")
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY_YAML)
    return path


def config(vp: VirtualPrinter, db: Path, stage: str, program: Path = PROGRAM, **kw: object) -> DeployConfig:
    return DeployConfig(program=program, printer=str(vp.dir / "printer-profile.yaml"), url=vp.url, stage=stage,
                        db=db, user="olga", **kw)  # type: ignore[arg-type]


def ours(vp: VirtualPrinter) -> list[str]:
    return sorted(f for f in vp.client.files() if f.startswith("layerloop-"))


def print_state(vp: VirtualPrinter) -> str:
    return str(vp.client.objects_query(("print_stats",))["print_stats"]["state"])


def rule(vp: VirtualPrinter) -> RuleLiveSupervisor:
    return RuleLiveSupervisor(vp.profile, load_material("PLA"), 200.0)


def test_staged_deployment_end_to_end(vp: VirtualPrinter, db: Path, policy: Path) -> None:
    client = vp.client
    outcome = run.Deployment(config(vp, db, "dry-run"), client).run()
    assert outcome.code == run.OK and ours(vp) == []
    # Out of order: full before the first layer.
    outcome = run.Deployment(config(vp, db, "full"), client).run()
    assert outcome.code == run.BLOCKED and "stage-order" in outcome.summary
    assert ours(vp) == [] and client.history(limit=5) == []
    outcome = run.Deployment(config(vp, db, "first-layer"), client).run()
    assert outcome.code == run.OK, outcome.summary
    assert "confirm-first-layer" in outcome.summary
    job = client.history(limit=1)[0]
    assert job.status == "completed" and job.filename.endswith("-first-layer.gcode")
    # Not confirmed yet.
    outcome = run.Deployment(config(vp, db, "full"), client).run()
    assert outcome.code == run.BLOCKED and "first-layer-confirmed" in outcome.summary
    GateLog(db).confirm_first_layer(outcome.gate.sha256, "rita", "even first layer")  # type: ignore[union-attr]
    outcome = run.Deployment(config(vp, db, "full", policy=policy), client, rule(vp)).run()
    events = DeploymentStore(db).events(outcome.deployment_id or 0)
    assert outcome.code == run.OK, (outcome.summary, [(e.kind, e.body) for e in events if e.kind != "telemetry"],
                                    [e.body for e in events if e.kind == "telemetry"][-6:])
    assert client.history(limit=1)[0].status == "completed"
    verdicts = [e.body for e in events if e.kind == "verdict"]
    sent = [e.body["commands"] for e in events if e.kind == "sent"]
    assert any(not v["allowed"] and v["commands"][0].startswith("M220") for v in verdicts), verdicts
    assert ["M104 S210"] in sent, sent
    refused = [v["commands"][0] for v in verdicts if not v["allowed"]]
    assert not any(c in refused for batch in sent for c in batch)  # nothing refused was sent
    tuning = GateLog(db).rows("tuning_log")
    assert any("M220" in row["command"] for row in tuning)


def test_labelled_outcomes_flow_into_the_real_world_dataset(vp: VirtualPrinter, db: Path, tmp_path: Path) -> None:
    """A person labels one deployed print; the export holds that one only, and training.import_real makes a
    real-world dataset from it whose one program carries the person's verdict and Moonraker's outcome."""
    from safety.deploy import outcomes
    from training.data import load_table
    from training.import_real import run_import

    _ready_for_full(vp, db)
    store = DeploymentStore(db)
    done = [d for d in store.deployments() if d.stage != "dry-run" and store.state(d.id) == "complete"]
    assert done, "the staged test leaves completed deployments"
    store.label(done[0].id, "rita", "success", note="clean walls")
    with pytest.raises(ValueError, match="outcome 'fine'"):
        store.label(done[0].id, "rita", "fine")
    out = tmp_path / "export"
    assert outcomes.export(store, vp.client, out) == [done[0].id]
    files = sorted(p.name for p in (out / "gcodes").iterdir())
    assert files == [f"layerloop-{done[0].sha256[:16]}-{done[0].stage}.gcode"]
    assert (out / "traces" / f"{done[0].id}.jsonl").read_text().count("\n") >= 3
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance[0]["labelled_by"] == "rita" and provenance[0]["deployed_by"] == "olga"
    dataset = tmp_path / "real"
    run_import([out / "gcodes"], dataset, history=out / "history.json", feedback=out / "labels.csv",
               printer="ender3-klipper")
    programs = load_table(str(dataset), "programs")
    assert len(programs) == 1
    row = programs[0]
    assert row["success"] is True and "feedback: success" in row["note"] and "completed" in row["note"]


def test_what_must_not_start_does_not(vp: VirtualPrinter, db: Path, tmp_path: Path) -> None:
    client = vp.client
    before_files, before_jobs = ours(vp), len(client.history(limit=50))
    unapproved = tmp_path / "other.gcode"
    unapproved.write_text(PROGRAM.read_text().replace("G1 Z10 F600", "G1 Z12 F600"))
    changed = tmp_path / "one-byte.gcode"
    changed.write_bytes(PROGRAM.read_bytes().replace(b"E0.8 ", b"E0.9 ", 1))
    for program in (unapproved, changed):
        outcome = run.Deployment(config(vp, db, "first-layer", program=program), client).run()
        assert outcome.code == run.BLOCKED and "approval" in outcome.summary
    assert ours(vp) == before_files and len(client.history(limit=50)) == before_jobs
    assert print_state(vp) in ("standby", "complete", "cancelled")


class SwappingClient(MoonrakerClient):
    """A test tool: after each upload, someone with access to the printer's disk swaps the file."""

    gcodes_dir: Path

    def upload(self, filename: str, content: bytes | str) -> dict[str, object]:
        answer = super().upload(filename, content)
        (self.gcodes_dir / filename).write_bytes(b"G28\nG1 Z0 F600\nM104 S260\n")
        return answer


def test_a_payload_swapped_on_the_printer_does_not_start(vp: VirtualPrinter, db: Path) -> None:
    client = SwappingClient(vp.url, api_key=KEY)
    client.gcodes_dir = vp.gcodes_dir
    jobs = len(vp.client.history(limit=50))
    outcome = run.Deployment(config(vp, db, "full"), client).run()
    assert outcome.code == run.MISMATCH, outcome.summary
    assert len(vp.client.history(limit=50)) == jobs and print_state(vp) != "printing"


def _in_thread(make: Callable[[], run.Deployment]) -> tuple[threading.Thread, list[run.Deployment], list[run.Outcome]]:
    """A deployment made and run in a thread of its own (its database connections belong to that thread)."""
    made: list[run.Deployment] = []
    outcomes: list[run.Outcome] = []

    def target() -> None:
        made.append(make())
        outcomes.append(made[0].run())

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, made, outcomes


def _ready_for_full(vp: VirtualPrinter, db: Path) -> None:
    """The program's first layer printed and confirmed (what the staged test leaves; done here when run alone)."""
    sha = hashlib.sha256(PROGRAM.read_bytes()).hexdigest()
    log = GateLog(db)
    if not log.passed(sha, "dry-run"):
        assert run.Deployment(config(vp, db, "dry-run"), vp.client).run().code == run.OK
    if not log.passed(sha, "first-layer"):
        assert run.Deployment(config(vp, db, "first-layer"), vp.client).run().code == run.OK
    if not log.passed(sha, CONFIRMED):
        log.confirm_first_layer(sha, "rita", "even first layer")


def _running(vp: VirtualPrinter, db: Path, policy: Path, on_fault: str) -> tuple[threading.Thread, list[run.Outcome]]:
    """A ``full`` deployment in a thread, returned once it prints its layers (homed, heated, settled)."""
    _ready_for_full(vp, db)
    thread, made, outcomes = _in_thread(lambda: run.Deployment(config(vp, db, "full", policy=policy,
                                                                      on_fault=on_fault), vp.client))

    def in_layers() -> bool:
        telemetry = DeploymentStore(db).events(made[0].deployment_id or 0, "telemetry") if made else []
        return bool(telemetry) and telemetry[-1].body["layer"] >= 0

    wait_for(in_layers, 60, "printing its layers")
    return thread, outcomes


def test_heater_fault_takes_the_configured_action(vp: VirtualPrinter, db: Path, policy: Path) -> None:
    thread, outcomes = _running(vp, db, policy, on_fault="cancel")
    time.sleep(2.5)  # the heater watchdog arms once the hotend has stayed in its band (2 s in this policy)
    vp.inject_fault("heater_disconnected", heater="extruder")
    started = time.monotonic()
    thread.join(30)
    vp.clear_fault("all")
    assert outcomes and outcomes[0].code == run.WATCHDOG, outcomes
    assert "heater extruder" in outcomes[0].summary and "cancel" in outcomes[0].summary
    assert time.monotonic() - started < 15.0
    wait_for(lambda: print_state(vp) == "cancelled", 10, "cancelled")
    vp.client.gcode_script("M109 S200", timeout_s=60)


class CuttableProxy:
    """A test tool: a TCP proxy to Moonraker that can drop every websocket (and refuse new ones) while plain
    HTTP requests still pass — a network that loses the long-lived connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = conn.recv(65536)
        websocket = b"upgrade: websocket" in head.lower()
        if websocket and self.cut.is_set():
            conn.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        if websocket:
            self.sockets += [conn, upstream]
        upstream.sendall(head)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def drop_websockets(self) -> None:
        self.cut.set()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def test_dropped_websocket_takes_the_configured_action(vp: VirtualPrinter, db: Path, policy: Path) -> None:
    _ready_for_full(vp, db)
    proxy = CuttableProxy(vp.port)
    try:
        client = MoonrakerClient(f"http://127.0.0.1:{proxy.port}", api_key=KEY)
        cfg = DeployConfig(program=PROGRAM, printer=str(vp.dir / "printer-profile.yaml"), url=client.url,
                           stage="full", db=db, user="olga", policy=policy, on_fault="pause")
        thread, made, outcomes = _in_thread(lambda: run.Deployment(cfg, client))
        wait_for(lambda: print_state(vp) == "printing", 30, "printing")
        time.sleep(1.0)
        events = DeploymentStore(db).events(made[0].deployment_id or 0, "state")
        assert any(e.body.get("transport") == "websocket" for e in events), events
        proxy.drop_websockets()
        thread.join(20)
        assert outcomes and outcomes[0].code == run.WATCHDOG and "no telemetry" in outcomes[0].summary, outcomes
        assert print_state(vp) == "paused"
    finally:
        proxy.close()
        vp.client.print_cancel()
        wait_for(lambda: print_state(vp) == "cancelled", 10, "cancelled")


def _deploy_process(vp: VirtualPrinter, db: Path, policy: Path, tmp_path: Path,
                    layer: int = 0) -> tuple[subprocess.Popen[bytes], Path]:
    """``python -m safety.deploy`` in a process, returned once the print reaches ``layer``."""
    _ready_for_full(vp, db)
    env = dict(os.environ, **{credentials.API_KEY_ENV: KEY})
    out = tmp_path / "deploy.out"
    with open(out, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "safety.deploy", str(PROGRAM), "--printer",
                                    str(vp.dir / "printer-profile.yaml"), "--url", vp.url, "--stage", "full",
                                    "--db", str(db), "--policy", str(policy), "--user", "olga"],
                                   cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    before = {d.id for d in DeploymentStore(db).deployments()}

    def in_layers() -> bool:
        assert process.poll() is None, out.read_text()
        new = [d.id for d in DeploymentStore(db).deployments() if d.id not in before]
        telemetry = DeploymentStore(db).events(new[0], "telemetry") if new else []
        return bool(telemetry) and telemetry[-1].body["layer"] >= layer

    wait_for(in_layers, 90, "printing its layers")
    return process, out


def test_killed_deployment_leaves_the_printer_paused(vp: VirtualPrinter, db: Path, policy: Path,
                                                     tmp_path: Path) -> None:
    # Two layers in (7 s): the last re-arm was made in the layers, where it covers 10 s (during the heat-up
    # it covers the heat-up).
    process, out = _deploy_process(vp, db, policy, tmp_path, layer=2)
    try:
        process.kill()
        process.wait(10)
        killed = time.monotonic()
        wait_for(lambda: print_state(vp) == "paused", deadman.DEADMAN_S + 5, "paused by the dead-man switch")
        assert time.monotonic() - killed <= deadman.DEADMAN_S + 5
    finally:
        if print_state(vp) in ("printing", "paused"):
            vp.client.print_cancel()
        wait_for(lambda: print_state(vp) == "cancelled", 10, "cancelled")


def test_ctrl_c_takes_the_fault_action_and_the_key_is_in_no_log(vp: VirtualPrinter, db: Path, policy: Path,
                                                               tmp_path: Path) -> None:
    process, out = _deploy_process(vp, db, policy, tmp_path)
    try:
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == run.ABORTED, out.read_text()
        assert print_state(vp) == "paused"
    finally:
        if print_state(vp) in ("printing", "paused"):
            vp.client.print_cancel()
        wait_for(lambda: print_state(vp) == "cancelled", 10, "cancelled")
    assert "KEY" not in Path(f"/proc/{os.getpid()}/cmdline").read_text()
    places = [out, db, *db.parent.glob(db.name + "-*"), *Path(vp.dir or "").rglob("*.log")]
    for place in places:
        if place.is_file():
            assert KEY.encode() not in place.read_bytes(), place


def test_credentials_and_urls_are_checked(tmp_path: Path) -> None:
    with pytest.raises(credentials.CredentialError, match="plain http to another machine"):
        credentials.check_url("http://192.168.1.20:7125")
    assert credentials.check_url("http://192.168.1.20:7125", allow_insecure_http=True)
    assert credentials.check_url("https://printer.example:7130/") == "https://printer.example:7130"
    with pytest.raises(credentials.CredentialError, match="must not carry credentials"):
        credentials.check_url("https://me:pw@printer.example")
    empty = tmp_path / "key"
    empty.write_text("\n")
    with pytest.raises(credentials.CredentialError, match="line 1 is empty"):
        credentials.read_api_key(empty)
    empty.write_text("abc\nignored\n")
    assert credentials.read_api_key(empty) == "abc"


def test_https_and_wss_through_a_tls_front(vp: VirtualPrinter, db: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Moonraker behind TLS (our test proxy, a self-signed certificate the client is told to trust): the gate's
    printer check, an upload read back, and the websocket telemetry all run over ``https``/``wss``."""
    cert, key = tls_proxy.self_signed(tmp_path)
    port = int(vp.url.rsplit(":", 1)[1])
    with tls_proxy.TlsProxy(port, cert, key) as proxy:
        url = f"https://127.0.0.1:{proxy.port}"
        untrusting = MoonrakerClient(url, api_key=KEY)
        with pytest.raises(MoonrakerError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            untrusting.server_info()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        client = MoonrakerClient(url, api_key=KEY)
        assert client.server_info()["klippy_state"] == "ready"
        client.upload("tls-check.gcode", b"G4 P1\n")  # not ours: the other tests count layerloop-* files
        assert client.download("tls-check.gcode") == b"G4 P1\n"
        # A generous connect time: the suite's other processes may keep both cores busy during the handshake.
        watcher = TelemetryWatcher(client, connect_timeout_s=20.0).start()
        try:
            assert watcher.transport == "websocket" and watcher.connected
            assert "extruder" in watcher.status()
        finally:
            watcher.stop()
        outcome = run.Deployment(replace(config(vp, db, "dry-run"), url=url), client).run()
        assert outcome.code == run.OK, outcome.summary


def test_serial_deployment_through_klippys_own_terminal(tmp_path: Path) -> None:
    """The gate's payload over a serial line, numbered and checksummed, to Klippy's G-code pseudo-terminal
    (a real peer that answers ``ok``); the printer ends where the program's last move put it."""
    from safety.deploy.serial_run import deploy_serial
    from safety.serial_sender import SerialSenderConfig

    db = tmp_path / "approvals.db"
    store = ApprovalStore(db)
    store.accounts.add_user("rita", "reviewer-password-1")
    store.decide(store.submit(PROGRAM.read_bytes(), printer="ender3-klipper", job="serial", submitted_by="sam"),
                 "rita", "approve", "ok")
    # Klippy's terminal ignores line numbers and never asks for a resend: a timeout there is an error.
    sender = SerialSenderConfig(resend_on_timeout=False, ok_timeout_s=30.0)
    with VirtualPrinter(fast_hotend(), mcu="file") as printer:
        assert printer.klippy is not None
        pty = str(printer.klippy.pty_path)
        for stage in ("dry-run", "first-layer"):
            cfg = DeployConfig(program=PROGRAM, printer="ender3-klipper", url=f"serial:{pty}", stage=stage, db=db,
                               user="olga", on_fault="estop")
            outcome = deploy_serial(cfg, pty, sender)
            assert outcome.code == run.OK, outcome.summary
        position = printer.client.objects_query(("toolhead",))["toolhead"]["position"]
        # The first-layer payload ends with the gate's safe stop: lifted 5 mm from its last Z.
        payload = (outcome.gate.payload or b"").decode().split(FIRST_LAYER_STOP)[0] if outcome.gate else ""
        last_z = [float(w[1:]) for line in payload.splitlines() if line.startswith("G1 ")
                  for w in line.split() if w.startswith("Z")][-1]
        assert position[2] == pytest.approx(last_z + 5.0, abs=1e-6)
        assert DeploymentStore(db).state(outcome.deployment_id or 0) == "starting"
        summary = DeploymentStore(db).events(outcome.deployment_id or 0, "summary")
        assert summary and summary[-1].body["code"] == run.OK
