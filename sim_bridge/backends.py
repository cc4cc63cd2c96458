"""The simulation backends behind one call: :func:`simulate` runs a program on a printer with the embedded
simulator, the real Klipper host in batch mode, a Moonraker printer or a Prunt, and returns a
:class:`~sim_bridge.report.PrintReport` whose ``backend`` and ``sources`` say which one produced each field.

* ``embedded`` — :class:`sim_bridge.simulator.Simulator` (the default; every field is its own);
* ``klipper-batch`` — :func:`sim_bridge.klippy.batch.simulate_klipper_batch`: Klippy decides success, time,
  the first error and its line, and the notices; temperatures, deposition and defects are the embedded
  simulator's;
* ``moonraker`` — :func:`sim_bridge.moonraker_backend.simulate_via_moonraker`: upload, print and follow a printer at
  ``url`` (with ``api_key`` unless the client is trusted);
* ``prunt`` — :func:`sim_bridge.prunt_backend.simulate_via_prunt`: upload, run and follow a Prunt (Prunt3D)
  motion controller or ``prunt_simulator`` at ``url``; Prunt decides success, the first error and its line,
  the run's time and the final position.

Every place a simulation happens takes a backend name from :data:`BACKENDS`: ``python -m sim_bridge
simulate --backend``, ``GcodeProgram-v0``'s ``backend`` argument, the dataset config's ``backend``, the
gate's ``--backend``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sim_bridge.config import ConfigError
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import EMBEDDED, KLIPPER_BATCH, MOONRAKER, PRUNT, PrintReport
from sim_bridge.simulator import Simulator

BACKENDS = (EMBEDDED, KLIPPER_BATCH, MOONRAKER, PRUNT)
"""The backend names, the default first."""
OFFLINE_BACKENDS = (EMBEDDED, KLIPPER_BATCH)
"""The backends that move no printer: what a check before deployment (the gate, the approval console)
may simulate with. The ``moonraker`` and ``prunt`` backends print on a machine, which is what those checks
guard."""
URL_BACKENDS = {MOONRAKER: "http://127.0.0.1:7125", PRUNT: "http://127.0.0.1:8080"}
"""The backends that need the printer's URL, each with an example."""


def check_backend(name: str, url: str | None = None) -> str:
    """``name`` when it is a backend (and ``moonraker`` or ``prunt`` has a ``url``); a :class:`ConfigError`
    otherwise.

    >>> check_backend("klipper-batch")
    'klipper-batch'
    """
    if name not in BACKENDS:
        raise ConfigError(f"backend {name!r}: unknown, choose one of {', '.join(BACKENDS)}")
    if name in URL_BACKENDS and not url:
        raise ConfigError(f"backend {name!r} needs the printer's URL (e.g. {URL_BACKENDS[name]})")
    return name


def simulate(program: str | os.PathLike[str] | bytes, printer: PrinterProfile | str | os.PathLike[str], *,
             backend: str = EMBEDDED, url: str | None = None, api_key: str | None = None,
             options: SimOptions | None = None, material: str = "PLA",
             timeout_s: float | None = None) -> PrintReport:
    """Run ``program`` (G-code text, bytes or a file path) on ``printer`` (a profile, a bundled name, a
    profile YAML, a Klipper ``printer.cfg``, a slicer config) with ``backend``.

    ``options`` configure the embedded simulator (alone, or for the fields the other backends cannot see);
    ``url``/``api_key``/``timeout_s`` are the Moonraker backend's; ``url``/``timeout_s`` the Prunt backend's
    (Prunt has no API keys).
    """
    check_backend(backend, url)
    if backend == PRUNT:
        if api_key:
            raise ConfigError("backend 'prunt': Prunt has no API keys (leave api_key unset)")
        # The Prunt client and its websocket library load only for this backend.
        from sim_bridge.prunt_backend import simulate_via_prunt

        kwargs = {} if timeout_s is None else {"timeout_s": timeout_s}
        return simulate_via_prunt(program, printer, str(url), material=material, **kwargs)
    if backend == KLIPPER_BATCH:
        # Klippy's modules load only for this backend.
        from sim_bridge.klippy.batch import simulate_klipper_batch

        return simulate_klipper_batch(program, printer, options=options, material=material)
    if backend == MOONRAKER:
        # The HTTP client and its websocket library load only for this backend.
        from sim_bridge.moonraker_backend import simulate_via_moonraker

        kwargs = {} if timeout_s is None else {"timeout_s": timeout_s}
        return simulate_via_moonraker(program, printer, url, api_key=api_key, material=material, **kwargs)
    profile = printer if isinstance(printer, PrinterProfile) else load_printer(printer)
    source = Path(program) if isinstance(program, os.PathLike) else program
    return Simulator(profile, load_material(material), options or SimOptions()).run(source)
