"""What one deployment is asked to do (the command line maps onto :class:`DeployConfig` 1:1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sim_bridge.config import ConfigError, check_ranges, ranged

FAULT_ACTIONS = ("pause", "cancel", "estop")
REFUSED_TUNING = ("fault", "log")


@dataclass(frozen=True)
class DeployConfig:
    program: Path
    """The G-code file (the exact bytes a person approved)."""
    printer: str
    """Printer profile: a bundled name, a profile YAML or a printer.cfg (what the gate checks against)."""
    url: str
    """Moonraker's URL (``http://127.0.0.1:7125``; checked by :func:`safety.deploy.credentials.check_url`)."""
    stage: str = ranged("dry-run", choices=("dry-run", "first-layer", "full"))
    """Gate stage: ``dry-run`` sends nothing, ``first-layer`` prints the first layer, ``full`` the program."""
    db: Path = Path("approvals.db")
    """The approvals database (approvals, gate log, tuning log, deployments)."""
    user: str = "operator"
    """Who deploys (recorded with the deployment)."""
    supervisor: str = "none"
    """``none``, ``rule`` or a trained supervisor model (``agent/``): what proposes tuning in ``full``."""
    on_fault: str = ranged("pause", choices=FAULT_ACTIONS)
    """What a watchdog or an operator's abort does to the print."""
    on_refused_tuning: str = ranged("log", choices=REFUSED_TUNING)
    """A supervisor command :class:`safety.gate.LiveTuning` refuses: ``log`` it (and send nothing), or treat it
    as a ``fault`` (the configured action)."""
    policy: Path | None = None
    """Safety policy YAML (:mod:`safety.policy`); None: the defaults."""
    material: str = "PLA"
    """Material of the gate's simulation."""
    timeout_s: float = ranged(24 * 3600.0, 10.0, 7 * 24 * 3600.0)
    """Longest a deployment may run before it stops with the fault action."""
    tick_s: float = ranged(0.25, 0.05, 5.0)
    """How often the watchdogs, requests and supervisor run."""
    allow_insecure_http: bool = False
    """Permit plain http to a non-loopback printer (the key and the program travel in clear)."""
    require_deadman: bool = True
    """Refuse ``first-layer``/``full`` on a printer without the dead-man switch (:mod:`safety.deploy.deadman`)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.user.strip():
            raise ConfigError("user = '': who deploys must be named")
