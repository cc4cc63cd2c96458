"""Several processes of one run (``accelerate launch`` / ``torchrun``): who is main, barriers, one stamp.

In one process (no ``WORLD_SIZE``) every function is trivial and accelerate is never asked.
"""

from __future__ import annotations

import os
import time

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

STAMP_FORMAT = "%Y%m%d-%H%M%S"
"""Time stamp of a run directory's name."""


def process_count() -> int:
    """Processes of this run (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _state() -> PartialState:
    # On CPUs (torchrun, gloo) accelerate only forms a process group when told the run is on CPU; the
    # trainers later ask for the same shared state with use_cpu, so both must agree.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    """True in the process that evaluates and writes the run directory (the only one without a launcher)."""
    if process_count() == 1:
        return True
    return _state().is_main_process


def wait_for_everyone() -> None:
    """Barrier between the processes of an ``accelerate launch`` (no-op in one process)."""
    if process_count() > 1:
        _state().wait_for_everyone()


def shared_stamp() -> str:
    """The run directory's time stamp, the main process's in every process."""
    stamp = time.strftime(STAMP_FORMAT)
    if process_count() == 1:
        return stamp
    _state()
    return broadcast_object_list([stamp])[0]
