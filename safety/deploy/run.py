"""One deployment, start to end (the package docstring lists the steps; docs/safety.md the threat model).

Exit codes (:class:`Outcome`): 0 done (dry-run allowed, first layer or full print complete), 1 the gate
blocked it (nothing sent), 3 the payload on the printer is not the approved one (nothing started), 4 a
watchdog fired (the fault action taken), 5 an operator aborted (the fault action taken), 6 the print ended
otherwise (cancelled or failed on the printer, Klippy stopped).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safety.approvals import ApprovalStore
from safety.deploy import deadman
from safety.deploy.config import DeployConfig
from safety.deploy.supervision import (
    LayerTracker,
    LiveTelemetry,
    Supervisor,
    layer_plans,
    live_telemetry,
)
from safety.deploy.watchdogs import HeaterWatchdog, TelemetryWatchdog, klippy_halted
from safety.deployments import DeploymentStore
from safety.gate import GateLog, GateResult, LiveTuning, gate, simulation_check
from safety.policy import SafetyPolicy, load_policy
from safety.tuning import TuningState
from sim_bridge.gcode import parse_line
from sim_bridge.moonraker import STATE_OBJECTS, MoonrakerClient, MoonrakerError, parse_printer_state
from sim_bridge.moonraker_watch import TelemetryWatcher
from sim_bridge.printers import load_printer

OK, BLOCKED, USAGE, MISMATCH, WATCHDOG, ABORTED, ENDED = 0, 1, 2, 3, 4, 5, 6
TELEMETRY_EVENT_S = 1.0
"""How often a telemetry event is written to the deployments store."""
FINISHED = ("complete", "cancelled", "error")


@dataclass
class Outcome:
    code: int
    summary: str
    deployment_id: int | None = None
    gate: GateResult | None = None


def job_hotend_temp_c(program: bytes) -> float:
    """The program's printing temperature: its first non-zero ``M104``/``M109`` target (0 when it sets none)."""
    for raw in program.splitlines():
        command = parse_line(raw.decode("utf-8", "replace"))
        if command is not None and command.code in ("M104", "M109") and command.params.get("S", 0.0) > 0.0:
            return float(command.params["S"])
    return 0.0


def payload_name(sha256: str, stage: str) -> str:
    """The file name the payload gets on the printer (unique per program and stage)."""
    return f"layerloop-{sha256[:16]}-{stage}.gcode"


class Rearmer:
    """Sends the dead-man re-arm from a thread of its own: Klipper runs it only between commands, so the call
    can block for as long as a heat-up, and the watchdogs must not wait with it. Only the newest request is
    sent; one still in flight is not queued again."""

    def __init__(self, client: MoonrakerClient) -> None:
        self.client = client
        self._latest: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="deadman")
        self._thread.start()

    def request(self, script: str) -> None:
        self._latest = script
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            script, self._latest = self._latest, None
            if script is not None:
                with contextlib.suppress(MoonrakerError, OSError):
                    self.client.gcode_script(script, timeout_s=deadman.CANCEL_AFTER_S)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(1.0)


class Deployment:
    """Runs :class:`DeployConfig` against the Moonraker printer ``client``; :meth:`run` returns the outcome."""

    def __init__(self, config: DeployConfig, client: MoonrakerClient, supervisor: Supervisor | None = None,
                 show: Callable[[LiveTelemetry, str], None] | None = None) -> None:
        self.config = config
        self.client = client
        self.supervisor = supervisor
        self.show = show
        self.profile = load_printer(config.printer)
        self.policy = load_policy(config.policy) if config.policy else SafetyPolicy()
        self.store = DeploymentStore(config.db)
        self.approvals = ApprovalStore(config.db)
        self.log = GateLog(config.db)
        self.stop_requested: str | None = None
        self.deployment_id: int | None = None

    # -- the steps
    def run(self) -> Outcome:
        program = self.config.program.read_bytes()
        state = None
        if self.config.stage != "dry-run":
            state = parse_printer_state(self.client.objects_query(STATE_OBJECTS))
            problem = self._printer_problem()
            if problem:
                return Outcome(BLOCKED, problem)
        result = gate(program, self.profile, self.config.stage, approvals=self.approvals, log=self.log,
                      printer_state=state, policy=self.policy, material=self.config.material,
                      name=str(self.config.program))
        if not result.allowed:
            failed = [c for c in result.checks if not c.passed]
            return Outcome(BLOCKED, "; ".join(f"{c.name}: {c.detail}" for c in failed), gate=result)
        if self.config.stage == "dry-run" or result.payload is None:
            return Outcome(OK, "dry-run allowed: nothing sent", gate=result)
        self.deployment_id = self.store.start(result.sha256, self.config.stage, self.config.url, self.profile.name,
                                              self.config.user, os.getpid())
        name = payload_name(result.sha256, self.config.stage)
        self.client.upload(name, result.payload)
        back = self.client.download(name)
        if hashlib.sha256(back).hexdigest() != hashlib.sha256(result.payload).hexdigest():
            self._event("error", {"reason": "payload on the printer differs from the gate's", "file": name})
            return self._end(Outcome(MISMATCH, f"{name} on the printer is not the payload the gate allowed "
                                               "(SHA-256 differs): not started", self.deployment_id, result))
        return self._print(result, name)

    def _printer_problem(self) -> str | None:
        status = self.client.objects_query(("toolhead", "webhooks"))
        if status.get("webhooks", {}).get("state") != "ready":
            return f"printer not ready: Klippy {status.get('webhooks', {}).get('state')}"
        if self.config.require_deadman:
            settings = self.client.objects_query(("configfile",)).get("configfile", {}).get("settings", {})
            missing = [name for name in deadman.REQUIRED_SECTIONS if name not in settings]
            if missing:
                return (f"the printer has no dead-man switch ({', '.join(missing)} missing): add the sections "
                        "`python -m safety.deploy deadman-cfg` prints to its printer.cfg")
        return None

    def _print(self, result: GateResult, name: str) -> Outcome:
        payload = result.payload or b""
        _, report = simulation_check(payload, self.profile, self.config.material)
        plans = layer_plans(report, self.profile.filament_diameter_mm) if report is not None else []
        tracker = LayerTracker(payload, plans)
        tuning = LiveTuning(self.profile, TuningState(job_hotend_temp_c(payload)), self.log, result.sha256,
                            self.policy)
        heaters, telemetry_dog = HeaterWatchdog(self.policy), TelemetryWatchdog(self.policy)
        blocking = deadman.blocking_seconds(payload, self.profile)
        self.client.gcode_script(deadman.arm(deadman.arm_duration_s(blocking, 1)))
        rearm = Rearmer(self.client)
        self.client.print_start(name)
        self._event("state", {"state": "started", "file": name,
                              "payload_sha256": hashlib.sha256(payload).hexdigest()})
        watcher = TelemetryWatcher(self.client).start()
        self._event("state", {"state": "watching", "transport": watcher.transport})
        # Ctrl-C and SIGTERM become the fault action (Python lets only the main thread take signals).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main \
            else {}
        started = time.monotonic()
        last_arm = last_event = started
        last_layer, handled_request, seen_printing, last_state = -1, 0, False, ""
        try:
            while True:
                now = time.monotonic()
                status = watcher.status()
                live = live_telemetry(status, tracker, now - started)
                if live.print_state != last_state:
                    self._event("state", {"state": live.print_state})
                    last_state = live.print_state
                seen_printing |= live.print_state in ("printing", "paused")
                halted = klippy_halted(status)
                if halted:
                    self._event("watchdog", {"watchdog": "klippy", "reason": halted, "action": "none"})
                    return self._end(Outcome(ENDED, halted, self.deployment_id, result))
                if seen_printing and live.print_state in FINISHED:
                    code = OK if live.print_state == "complete" else ENDED
                    return self._end(Outcome(code, f"print {live.print_state}"
                                             + (self._next_step(result) if code == OK else ""),
                                             self.deployment_id, result))
                reason = telemetry_dog.check(watcher.age_s) or heaters.check(status, now)
                if reason is None and now - started > self.config.timeout_s:
                    reason = f"deployment ran past its timeout ({self.config.timeout_s:g} s)"
                if reason:
                    return self._fault(WATCHDOG, "watchdog", reason, result)
                if self.stop_requested:
                    return self._fault(ABORTED, "operator", self.stop_requested, result)
                for request in self.store.requests_after(self.deployment_id or 0, handled_request):
                    handled_request = request.id
                    outcome = self._request(request.action, request.user, result)
                    if outcome is not None:
                        return outcome
                if now - last_arm >= deadman.DEADMAN_S * deadman.REARM_FRACTION:
                    rearm.request(deadman.arm(deadman.arm_duration_s(blocking, live.line)))
                    last_arm = now
                if live.layer != last_layer and live.layer >= 1 and live.print_state == "printing":
                    last_layer = live.layer
                    outcome = self._supervise(tuning, live, tracker, result)
                    if outcome is not None:
                        return outcome
                if now - last_event >= TELEMETRY_EVENT_S:
                    self._event("telemetry", live.as_dict())
                    last_event = now
                    if self.show is not None:
                        self.show(live, watcher.transport)
                time.sleep(self.config.tick_s)
        finally:
            watcher.stop()
            rearm.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- decisions
    def _supervise(self, tuning: LiveTuning, live: LiveTelemetry, tracker: LayerTracker,
                   result: GateResult) -> Outcome | None:
        if self.supervisor is None or self.config.stage != "full" or live.layer >= len(tracker.plans):
            return None
        proposal = self.supervisor.propose(live, tracker.plans[live.layer])
        commands = [line.strip() for line in proposal.splitlines() if line.strip() and not line.startswith(";")]
        self._event("proposal", {"layer": live.layer, "supervisor": self.supervisor.name, "commands": commands})
        for command in commands:
            allowed, verdict = tuning.send(command)
            reasons = [v.message for v in verdict.violations]
            self._event("verdict", {"layer": live.layer, "commands": [command], "allowed": allowed, "reasons": reasons})
            if not allowed:
                self.supervisor.refused(command, reasons)
                if self.config.on_refused_tuning == "fault":
                    return self._fault(WATCHDOG, "refused-tuning", f"refused {command!r}: {'; '.join(reasons)}",
                                       result)
                continue
            try:
                self.client.gcode_script(command)
                self._event("sent", {"layer": live.layer, "commands": [command]})
            except MoonrakerError as exc:
                return self._fault(WATCHDOG, "refused-by-printer", f"{command!r}: {exc.message}", result)
        return None

    def _request(self, action: str, user: str, result: GateResult) -> Outcome | None:
        self._event("action", {"action": action, "user": user})
        if action == "pause":
            self._control_call(self.client.print_pause)
        elif action == "resume":
            self._control_call(self.client.print_resume)
        elif action == "estop":
            return self._fault(ABORTED, "operator", f"emergency stop by {user}", result, action="estop")
        elif action == "abort":
            return self._fault(ABORTED, "operator", f"abort by {user}", result)
        return None

    def _fault(self, code: int, watchdog: str, reason: str, result: GateResult, action: str | None = None) -> Outcome:
        action = action or self.config.on_fault
        done = self._act(action)
        self._event("watchdog", {"watchdog": watchdog, "reason": reason, "action": action, "done": done})
        return self._end(Outcome(code, f"{reason} → {action}{'' if done else ' (FAILED: see the log)'}",
                                 self.deployment_id, result))

    def _act(self, action: str) -> bool:
        calls = {"pause": self.client.print_pause, "cancel": self.client.print_cancel,
                 "estop": self.client.emergency_stop}
        done = self._control_call(calls[action])
        if not done and action != "estop":
            done = self._control_call(self.client.emergency_stop)  # the action failed: stop harder
        return done

    def _control_call(self, call: Callable[[], Any]) -> bool:
        try:
            call()
            return True
        except (MoonrakerError, OSError):
            return False

    def _control(self, script: str) -> None:
        self._control_call(lambda: self.client.gcode_script(script))

    def _end(self, outcome: Outcome) -> Outcome:
        if self.deployment_id is not None and self.config.stage != "dry-run":
            if outcome.code in (OK, ENDED, MISMATCH):
                self._control(deadman.disarm())
            self._event("summary", {"code": outcome.code, "summary": outcome.summary})
        return outcome

    def _next_step(self, result: GateResult) -> str:
        if self.config.stage != "first-layer":
            return ""
        return (f"; inspect the first layer, then confirm it in the console or with `python -m safety.gate "
                f"confirm-first-layer {result.sha256} --db {self.config.db} --user NAME`")

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        if self.deployment_id is not None:
            self.store.event(self.deployment_id, kind, body)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = f"operator stop ({signal.Signals(signum).name})"
