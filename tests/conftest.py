"""What the test files share: where the fixtures and the real-world corpus are, and the tiny model config.

The wild G-code corpus (34 real files from 20 slicers) lies in ``../shared/data/wild-gcode`` beside a clone
(``LAYERLOOP_WILD_GCODE`` overrides). Tests that read it are skipped where it is missing on a developer's
machine, but under CI (``CI`` set) a missing corpus fails the run before any test: a green run must have
read the real files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = ROOT / "tests" / "golden"
SAFETY_GOLDEN = ROOT / "tests" / "safety_golden"


def _wild_dir() -> Path:
    if os.environ.get("LAYERLOOP_WILD_GCODE"):
        return Path(os.environ["LAYERLOOP_WILD_GCODE"])
    for candidate in (ROOT.parent / "shared" / "data" / "wild-gcode", ROOT / "shared" / "data" / "wild-gcode"):
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "data" / "wild-gcode"


WILD_DIR = _wild_dir()
WILD_MANIFEST: dict[str, Any] = (json.loads((WILD_DIR / "MANIFEST.json").read_text())
                                 if (WILD_DIR / "MANIFEST.json").is_file() else {"files": []})
WILD_FILES: list[str] = [entry["file"] for entry in WILD_MANIFEST["files"]]
needs_wild = pytest.mark.skipif(not WILD_FILES, reason=f"wild G-code corpus not found at {WILD_DIR} "
                                "(set LAYERLOOP_WILD_GCODE)")

PRUNT_DIR = Path(os.environ.get("LAYERLOOP_PRUNT_DATA") or WILD_DIR.parent / "prunt")
"""Recorded outputs of the real Prunt (``../shared/data/prunt``, its README says how they were made;
``LAYERLOOP_PRUNT_DATA`` overrides)."""

TINY_MODEL: dict[str, Any] = {"corpus_jobs": 3, "max_length_tokens": 1024, "seed": 0}
"""The smallest embedded model the model and export tests build (a few seconds on a CPU)."""


_CACHE_ENVS = ("LAYERLOOP_KLIPPY_CACHE", "LAYERLOOP_SLICER_CACHE")
"""The caches tests would otherwise write under ``~/.cache``: the derived Klippy dictionary, PrusaSlicer's
programs."""
_made_caches: list[str] = []
"""The cache folders this run made (removed at its end); none for a cache the caller named."""


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") and not WILD_FILES:
        raise pytest.UsageError(f"CI: the wild G-code corpus is missing at {WILD_DIR}; tests of real-world "
                                "input must not be skipped in CI")
    # Tests never write the user's ~/.cache: each cache goes to a folder of this run.
    for name in _CACHE_ENVS:
        if not os.environ.get(name):
            os.environ[name] = tempfile.mkdtemp(prefix=f"ll-{name.lower()}-")
            _made_caches.append(os.environ[name])


def pytest_unconfigure(config: pytest.Config) -> None:
    while _made_caches:
        shutil.rmtree(_made_caches.pop(), ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_model_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny embedded-model config with its own model cache (built once per test module)."""
    from training.model import ModelConfig

    return ModelConfig(cache_dir=str(tmp_path_factory.mktemp("models")), **TINY_MODEL)


VIRTUAL_PRINTER_API_KEY = "layerloop-test-key"
"""The API key the ``virtual_printer`` fixture's Moonraker requires (no trusted clients)."""


@pytest.fixture(scope="module")
def virtual_printer() -> Any:
    """Real Klippy (live mode, file MCU) and Moonraker on 127.0.0.1 for one test module (``ender3-klipper``, API key
    :data:`VIRTUAL_PRINTER_API_KEY`); stopped, its processes ended and its temp dir removed, even when tests
    fail. Never skipped: without Klippy or Moonraker it fails with the set-up hint."""
    # The virtual printer loads only in the modules that ask for it: it starts two processes.
    from sim_bridge.virtual_printer import VirtualPrinter

    # The file MCU: these tests are about Klippy's and Moonraker's behaviour, not time (tests/test_virtual_mcu.py).
    printer = VirtualPrinter("ender3-klipper", api_key=VIRTUAL_PRINTER_API_KEY, mcu="file")
    printer.start()
    try:
        yield printer
    finally:
        printer.stop()
