"""A deployment to a Marlin-style printer over a serial port (``python -m safety.deploy … --serial PORT``).

The same gate as a Moonraker deployment, on the printer's state as the firmware reports it (``M105``: a
serial printer has no idle/printing state to read, so it counts as ready and idle once it answers), then the
gate's payload through :class:`safety.serial_sender.SerialSender`: numbered, checksummed, resent when lost.
While it sends, the heater watchdog reads the firmware's temperature reports; a fault, Ctrl-C or SIGTERM
sends ``M112`` (a serial printer cannot be paused from outside its stream, so the only action is the
emergency stop). There is no dead-man switch on this path: a Marlin printer keeps running the lines it has
buffered (a few) and then waits for more, so a sender that dies stops the print within a few moves, with
the heaters on until the firmware's own idle timeout turns them off.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from safety.approvals import ApprovalStore
from safety.deploy.config import DeployConfig
from safety.deploy.run import ABORTED, BLOCKED, ENDED, OK, WATCHDOG, Outcome
from safety.deploy.watchdogs import HeaterWatchdog
from safety.deployments import DeploymentStore
from safety.gate import GateLog, gate
from safety.policy import SafetyPolicy, load_policy
from safety.serial_sender import (
    EmergencyStopped,
    SendError,
    SerialSender,
    SerialSenderConfig,
    TemperatureReport,
    parse_temperatures,
)
from sim_bridge.moonraker import PrinterState
from sim_bridge.printers import load_printer


def printer_state(sender: SerialSender) -> PrinterState:
    """The printer's state from ``M105`` (ready and idle: it answered)."""
    report = next((r for line in sender.query("M105") if (r := parse_temperatures(line)) is not None), None)
    if report is None or report.hotend_c is None:
        report = sender.last_temperature
    if report is None or report.hotend_c is None:
        raise SendError("M105 got no temperature report", wire_line=0, source_line=None, command="M105",
                        received=(), expected="T:<temp> /<target>")
    return PrinterState("ready", "standby", report.hotend_c, report.hotend_target_c or 0.0,
                        report.bed_c if report.bed_c is not None else 0.0, report.bed_target_c or 0.0)


def deploy_serial(config: DeployConfig, port: str, sender_config: SerialSenderConfig | None = None) -> Outcome:
    """Run ``config``'s stage over the serial port ``port``."""
    profile = load_printer(config.printer)
    policy = load_policy(config.policy) if config.policy else SafetyPolicy()
    store, log = DeploymentStore(config.db), GateLog(config.db)
    program = Path(config.program).read_bytes()
    heaters = HeaterWatchdog(policy)
    fault: list[str] = []
    sender: SerialSender | None = None

    def on_temperature(report: TemperatureReport) -> None:
        status = {"extruder": {"temperature": report.hotend_c, "target": report.hotend_target_c},
                  "heater_bed": {"temperature": report.bed_c, "target": report.bed_target_c}}
        reason = heaters.check(status, report.received_s)
        if reason and not fault and sender is not None:
            fault.append(reason)
            sender.emergency_stop()

    sender = SerialSender.open(port, sender_config, on_temperature=on_temperature)
    with sender:
        state = printer_state(sender) if config.stage != "dry-run" else None
        result = gate(program, profile, config.stage, approvals=ApprovalStore(config.db), log=log,
                      printer_state=state, policy=policy, material=config.material, name=str(config.program))
        if not result.allowed:
            failed = [c for c in result.checks if not c.passed]
            return Outcome(BLOCKED, "; ".join(f"{c.name}: {c.detail}" for c in failed), gate=result)
        if config.stage == "dry-run" or result.payload is None:
            return Outcome(OK, "dry-run allowed: nothing sent", gate=result)
        deployment_id = store.start(result.sha256, config.stage, f"serial:{port}", profile.name, config.user, 0)

        def on_signal(signum: int, frame: object) -> None:
            fault.append(f"operator stop ({signal.Signals(signum).name})")
            sender.emergency_stop()

        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            sent = sender.send(result.payload)
            code, summary = OK, f"sent {sent.lines_acked} lines ({sent.resends} resent) in {sent.elapsed_s:.0f} s"
        except EmergencyStopped:
            reason = fault[0] if fault else "emergency stop"
            code, summary = (ABORTED if reason.startswith("operator") else WATCHDOG), f"{reason} → M112"
            store.event(deployment_id, "watchdog", {"watchdog": "serial", "reason": reason, "action": "estop"})
        except SendError as exc:
            code, summary = ENDED, f"line {exc.source_line}: {exc}"
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        store.event(deployment_id, "summary", {"code": code, "summary": summary})
        return Outcome(code, summary, deployment_id, result)
