"""CPU cost of the virtual MCU during a print, beside its peer in the same run (the Klippy host it serves).

    .venv/bin/python benchmarks/bench_virtual_mcu.py [--label NAME] [--file GCODE --seconds N]

Starts a virtual printer (``ender3-klipper`` with the tests' fast hotend), homes, heats to 200 °C, then
prints ``tests/fixtures/virtual_mcu/square6.gcode`` (six layers of a 40 mm square, ~40 s of motion) and
reads, from ``/proc``, the CPU seconds (user + system) the MCU process, Klippy and Moonraker used over the
print alone, and over the heat-up (heaters on, nothing moving). The figure the issue bounds is the MCU's
share of one core during the print (< 25 %). Also: start-up to ready, the MCU's own busy time (its loop's
time between waking and sleeping), and its peak resident memory. With ``--file`` a real sliced file is
printed instead, for its first ``--seconds`` (then cancelled): dense short segments are what cost an MCU
most. Its heater commands are dropped (the hotend is already at 200 °C; a bed heat-up would only add idle
time). Writes ``benchmarks/out/bench_virtual_mcu-LABEL.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim_bridge.moonraker import follow_print  # noqa: E402
from sim_bridge.printers import load_printer  # noqa: E402
from sim_bridge.virtual_printer import VirtualPrinter  # noqa: E402

PRINT_FILE = ROOT / "tests" / "fixtures" / "virtual_mcu" / "square6.gcode"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--file", type=Path, help="a real G-code file to print instead of the square")
    parser.add_argument("--seconds", type=float, default=60.0, help="with --file: how long to print it")
    args = parser.parse_args()
    gcode_file = args.file or PRINT_FILE
    text = gcode_file.read_text(errors="replace")
    if args.file:
        text = "\n".join(line for line in text.splitlines()
                         if line.split(";")[0].split()[:1] not in (["M104"], ["M109"], ["M140"], ["M190"]))
    profile = load_printer("ender3-klipper")
    hotend = dataclasses.replace(profile.hotend, power_w=60.0, heat_capacity_j_per_k=4.0, loss_w_per_k=0.1,
                                 pid_kp=15.0, pid_ki=4.0, pid_kd=30.0)
    profile = dataclasses.replace(profile, hotend=hotend)
    started = time.monotonic()
    with VirtualPrinter(profile) as vp:
        ready_s = time.monotonic() - started
        assert vp.mcu is not None and vp.klippy is not None and vp.klippy.process is not None
        assert vp.moonraker is not None
        pids = {"mcu": vp.mcu.process.pid, "klippy": vp.klippy.process.pid, "moonraker": vp.moonraker.pid}
        vp.client.gcode_script("G28\nM400", timeout_s=60)
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        vp.client.gcode_script("M109 S200", timeout_s=180)
        heat_wall = time.monotonic() - t0
        heated = {name: cpu_s(pid) for name, pid in pids.items()}
        vp.client.upload(gcode_file.name, text)
        busy_before = float(vp.mcu_status()["busy_s"])
        t1 = time.monotonic()
        vp.client.print_start(gcode_file.name)
        if args.file:
            time.sleep(args.seconds)
            status = vp.client.objects_query(("print_stats",))
            print("state after", args.seconds, "s:", status["print_stats"])
            vp.client.print_cancel()
        else:
            status, _ = follow_print(vp.client, timeout_s=300)
        print_wall = time.monotonic() - t1
        printed = {name: cpu_s(pid) for name, pid in pids.items()}
        busy = float(vp.mcu_status()["busy_s"]) - busy_before
        rss = {name: round(peak_rss_mb(pid), 1) for name, pid in pids.items()}
    result = {
        "label": args.label, "file": gcode_file.name, "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "ready_s": round(ready_s, 2),
        "print_state": status["print_stats"]["state"], "print_wall_s": round(print_wall, 2),
        "print_duration_s": round(float(status["print_stats"]["print_duration"]), 2),
        "heat_wall_s": round(heat_wall, 2),
        "print_cpu_share_of_one_core": {n: round((printed[n] - heated[n]) / print_wall, 4) for n in pids},
        "heat_cpu_share_of_one_core": {n: round((heated[n] - before[n]) / heat_wall, 4) for n in pids},
        "mcu_loop_busy_share_print": round(busy / print_wall, 4),
        "peak_rss_mb": rss,
    }
    result["mcu_to_klippy_cpu_ratio_print"] = round(
        result["print_cpu_share_of_one_core"]["mcu"] / max(1e-9, result["print_cpu_share_of_one_core"]["klippy"]), 3)
    out = ROOT / "benchmarks" / "out" / f"bench_virtual_mcu-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
