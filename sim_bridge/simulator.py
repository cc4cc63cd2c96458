"""The embedded print simulator: a program and a printer in, a :class:`~sim_bridge.report.PrintReport` out.

Pipeline per run (each stage one module): interpret commands into moves and events
(:mod:`~sim_bridge.interpreter`) → plan the moves (:mod:`~sim_bridge.planner`) → run the timeline with the
heaters (:mod:`~sim_bridge.thermal`) → stop at the first fatal error (cold extrusion, heater fault, or the
interpreter's range/homing/extrusion errors) → melt capacity → deposition (:mod:`~sim_bridge.deposition`)
→ report. A :class:`Simulator` keeps the machine between runs, so an environment can feed it one layer at a
time and the nozzle, the heaters and the printed layers are where the last step left them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim_bridge import deposition as dep
from sim_bridge import failures as fail
from sim_bridge.events import F_EXTRUDE, F_KINEMATIC, F_STOP_BEFORE
from sim_bridge.gcode import Command, GcodeError, GcodeReader, program_path
from sim_bridge.interpreter import Interpreter
from sim_bridge.machine import new_state
from sim_bridge.options import PLANNERS, SimOptions
from sim_bridge.planner import plan_klipper, plan_marlin
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import Material, PrinterProfile
from sim_bridge.prunt_dialect import limits_of
from sim_bridge.report import Failure, LayerMetrics, Notice, PrintReport, unreadable_failure
from sim_bridge.thermal import (
    FAULT_BED,
    FAULT_HOTEND,
    FAULT_NONE,
    FAULT_TIMEOUT_BED,
    S_TARGET,
    S_TEMP,
    heater_params,
    heater_state,
    melt_capacity_mm3_s,
    run_timeline,
)
from sim_bridge.time_cap import over_time_cap

DEFECT_MESSAGES = (
    (dep.D_COLLISION, fail.NOZZLE_COLLISION, "Nozzle collides with printed material"),
    (dep.D_MID_AIR, fail.EXTRUSION_IN_MID_AIR, "Extrusion into mid-air: unsupported beyond the bridge limit"),
    (dep.D_FIRST_HIGH, fail.FIRST_LAYER_TOO_HIGH, "First layer too high: the bead does not reach the bed"),
    (dep.D_FIRST_LOW, fail.FIRST_LAYER_TOO_LOW, "First layer too low: the nozzle scrapes the bed"),
    (dep.D_NO_COOLING, fail.OVERHANG_WITHOUT_COOLING, "Overhang or bridge printed without part cooling"),
)
WARNING_MESSAGES = (
    (dep.D_UNCOOLED_OVERHANG, fail.OVERHANG_WITHOUT_COOLING,
     "Unsupported bead printed without part cooling, within a bead width of support: it may curl "
     "(the part keeps its shape)"),
)
"""Defects below the grade that spoils a part: reported in ``PrintReport.warnings``, not as failures."""
HEATER_NAMES = {FAULT_HOTEND: "extruder", FAULT_BED: "heater_bed"}
BATCH_START_S = 0.25
"""Klipper batch mode: motion starts 0.25 s into the print (the planner's start buffer)."""
BATCH_TAIL_S = 0.252
"""Klipper batch mode: time reported after motion that ends in a forced flush (0.25 s + 2 flush delays)."""


@dataclass
class ExecutedMoves:
    """The moves that ran, for plots and environments (machine coordinates)."""

    starts: np.ndarray
    xyz: np.ndarray
    de: np.ndarray
    flags: np.ndarray
    layer: np.ndarray
    line: np.ndarray
    width: np.ndarray
    start_t: np.ndarray
    duration: np.ndarray
    delivered: np.ndarray
    extruded_z_mm: tuple[float, float] = field(init=False)
    """Lowest and highest end height of the extruding moves ((inf, -inf): none), so that a search for one
    layer's moves skips the chunks that hold none of them."""

    def __post_init__(self) -> None:
        z = self.xyz[(self.flags & F_EXTRUDE) != 0, 2]
        self.extruded_z_mm = (float(z.min()), float(z.max())) if z.size else (math.inf, -math.inf)


@dataclass
class _Totals:
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(4))
    moves: int = 0
    lines: int = 0
    commands: int = 0
    bbox_lo: np.ndarray = field(default_factory=lambda: np.full(3, np.inf))
    bbox_hi: np.ndarray = field(default_factory=lambda: np.full(3, -np.inf))


class Simulator:
    """A simulated printer that keeps its state between runs."""

    def __init__(self, printer: PrinterProfile | str = "ender3-klipper", material: Material | str = "PLA",
                 options: SimOptions | None = None) -> None:
        self.profile = load_printer(printer) if isinstance(printer, (str, os.PathLike)) else printer
        self.material = load_material(material) if isinstance(material, str) else material
        self.options = options or SimOptions()
        self.planner = self.options.planner or self.profile.firmware
        if self.planner not in PLANNERS:
            raise ValueError(f"planner {self.planner!r}: must be one of {', '.join(PLANNERS)}")
        p = self.profile
        self.state = new_state(p, self.options)
        start_hot, start_bed = self.options.start_hotend_temp_c, self.options.start_bed_temp_c
        self.hot = heater_state(p.ambient_temp_c if start_hot is None else start_hot)
        self.bed = heater_state(p.ambient_temp_c if start_bed is None else start_bed)
        self.time_s = 0.0
        self.fan = 0.0
        self.heightmap = dep.HeightMap(p.position_min_mm[0], p.position_min_mm[1], p.position_max_mm[0],
                                       p.position_max_mm[1], self.options.resolution_mm)
        self.failures: list[Failure] = []
        self.notices: list[Notice] = []
        self.warnings: list[Failure] = []
        self.layers: dict[int, LayerMetrics] = {}
        self.layer_z: dict[int, float] = {}
        self.fatal: Failure | None = None
        self.executed: list[ExecutedMoves] = []
        self.totals = _Totals()
        self.e_total = 0.0
        self.e_max = 0.0
        self.extrusion_scale = 1.0
        """Hidden physics for environments: true over nominal filament cross-section (a thicker or thinner
        filament than the printer is configured for); scales the material each move delivers."""
        self.hotend_offset_c = 0.0
        """Hidden physics: true hotend temperature minus the thermistor's reading (the PID regulates the
        reading); shifts melt capacity."""
        self._run_open = 0.0
        self._adrift_open = 0.0
        self._trace_rows: list[np.ndarray] = []
        self._trace_pos: list[np.ndarray] = []
        self._trace_flow: list[np.ndarray] = []
        self._trace_next = np.array([0.0, 0.0])
        self._derive()

    def _derive(self) -> None:
        """Values computed from the profile, material and options once rather than per move."""
        p = self.profile
        self.hot_params = heater_params(p.hotend)
        self.bed_params = heater_params(p.bed)
        self._tan_overhang = math.tan(math.radians(self.material.max_overhang_deg))
        first_max = self.options.first_layer_max_gap_mm
        self._first_max = 1.0 * p.nozzle_diameter_mm if first_max is None else first_max
        support = self.options.support_gap_max_mm
        self._support_gap = 0.8 * p.nozzle_diameter_mm if support is None else support
        self._max_e_v = p.max_extrude_only_velocity_mm_s or (
            p.max_velocity_mm_s * p.max_cross_section_mm2 / p.filament_area_mm2)
        self._max_e_a = p.max_extrude_only_accel_mm_s2 or (
            p.max_accel_mm_s2 * p.max_cross_section_mm2 / p.filament_area_mm2)

    def set_profile(self, profile: PrinterProfile) -> None:
        """Swap the printer's profile between runs (hidden physics, domain randomisation).

        Heaters keep their temperatures; velocity limits keep any change a program made
        (``SET_VELOCITY_LIMIT``, ``M204``) as a ratio to the old profile's.
        """
        old, self.profile = self.profile, profile
        settings = self.state.settings
        if settings is not None:
            settings.max_velocity *= profile.max_velocity_mm_s / old.max_velocity_mm_s
            settings.max_accel *= profile.max_accel_mm_s2 / old.max_accel_mm_s2
            if old.square_corner_velocity_mm_s > 0:
                settings.square_corner_velocity *= (profile.square_corner_velocity_mm_s
                                                    / old.square_corner_velocity_mm_s)
        self._derive()

    def set_options(self, options: SimOptions) -> None:
        """Swap the simulator options between runs (the height-map resolution stays as it was)."""
        self.options = options
        self._derive()

    # -- running ---------------------------------------------------------------------------------------
    def run(self, program: str | os.PathLike[str] | bytes | Iterable[Command], *, name: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> PrintReport:
        """Run a program (a path, G-code text/bytes, or parsed commands) and return the cumulative report.

        ``progress(bytes_read, total_bytes)`` is called now and then while a file is read.
        """
        self.feed(program, name=name, progress=progress)
        return self.report()

    def feed(self, program: str | os.PathLike[str] | bytes | Iterable[Command], *, name: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> None:
        """:meth:`run` without building the report: what a caller running many short programs on one
        printer uses (an episode's steps), reading :attr:`failures` and :meth:`final_state` instead."""
        if self.fatal is not None:
            self.notices.append(Notice(fail.STOPPED, "print already stopped by an earlier error; nothing run",
                                       self.fatal.line))
            return
        try:
            commands, reader = self._commands(program, name, progress)
        except GcodeError as exc:
            self.fatal = unreadable_failure(exc, self.state.layer)
            self.failures.append(self.fatal)
            return
        interp = Interpreter(self.profile, self.material, self.options, self.state)
        prog = interp.run(commands)
        refusal = getattr(reader, "refusal", None)  # Prunt's reader stops at the line Prunt refuses
        if refusal is not None and prog.fatal is None:
            prog.fatal = refusal.failure(self.state.layer)
        if reader is not None:
            self.notices.extend(Notice(fail.READER_WARNING, w.message, w.line) for w in reader.warnings)
            self.totals.lines += max(reader.lines_read, prog.lines)
        else:
            self.totals.lines = max(self.totals.lines, prog.lines)
        self.totals.commands += prog.commands
        self.notices.extend(prog.notices)
        self.layer_z.update(prog.layer_z)
        n = len(prog.line)
        if self.planner == "klipper":
            profile, move_d, _accel = plan_klipper(
                prog.starts, prog.xyz, prog.de, prog.feed, prog.flags, prog.settings_id, prog.settings_table,
                self.profile.max_z_velocity_mm_s, self.profile.max_z_accel_mm_s2, self._max_e_v, self._max_e_a,
                self.profile.instantaneous_corner_velocity_mm_s)
        elif self.planner == "prunt":
            from sim_bridge.prunt_planner import plan_prunt_program  # Prunt's planner, for Prunt only

            profile, move_d = plan_prunt_program(self.profile, prog)
        else:
            profile, move_d, _accel = plan_marlin(prog.starts, prog.xyz, prog.de, prog.feed, prog.flags,
                                                  prog.settings_id, prog.settings_table)
        durations = profile[:, 3] + profile[:, 4] + profile[:, 5]
        ev = prog.events
        ev_idx = np.array([e[0] for e in ev], dtype=np.int64)
        ev_kind = np.array([e[1] for e in ev], dtype=np.int64)
        ev_value = np.array([e[2] for e in ev], dtype=np.float64)
        ev_line = [e[4] for e in ev]
        # A program that would run for more than a week stops there: the heater timeline costs simulated time.
        over = over_time_cap(durations, prog.line, prog.layer, ev_idx, ev_kind, ev_value, ev_line, self.time_s)
        if over is not None:
            n, n_events, prog.fatal = over
            durations = durations[:n]
            ev_idx, ev_kind, ev_value = ev_idx[:n_events], ev_kind[:n_events], ev_value[:n_events]

        saved = (self.hot.copy(), self.bed.copy(), self._trace_next.copy(), self.time_s, self.fan)
        timeline = self._timeline(durations, prog.de, ev_idx, ev_kind, ev_value)
        start_t, hot_t, fan_at, buckets, fault, now, fan, trace = timeline
        fatal = prog.fatal
        n_exec = n
        if fault[0] != FAULT_NONE:
            n_exec = int(fault[2])
            line = ev_line[int(fault[3])] if fault[3] >= 0 else int(prog.line[min(n_exec, n - 1)]) if n else 0
            fatal = self._heater_failure(int(fault[0]), line, prog)
        cold_limit = self.profile.min_extrude_temp_c
        if not self.options.klipper_batch_mode and n:
            cold = np.flatnonzero((prog.de[:n_exec] != 0.0) & (hot_t[:n_exec] < cold_limit))
            if cold.size:
                k = int(cold[0])
                layer = int(prog.layer[k])
                fatal = Failure(fail.COLD_EXTRUSION, "Extrude below minimum temp (hotend "
                                f"{hot_t[k]:.1f} C, min_extrude_temp {cold_limit:.1f} C)",
                                int(prog.line[k]), layer, fatal=True)
                n_exec = k
                # Re-run the timeline up to the failing move so time and heaters stop there.
                self.hot, self.bed, self._trace_next, self.time_s, self.fan = (
                    saved[0].copy(), saved[1].copy(), saved[2].copy(), saved[3], saved[4])
                keep = ev_idx <= k
                timeline = self._timeline(durations[:k], prog.de[:k], ev_idx[keep], ev_kind[keep], ev_value[keep])
                start_t, hot_t, fan_at, buckets, fault, now, fan, trace = timeline
        if self.options.klipper_batch_mode and fatal is None:
            buckets[1] += self._batch_overheads(prog, durations, n)
        self.time_s = now
        self.fan = fan
        self.totals.buckets += buckets
        self._finish_moves(prog, profile, move_d, durations, start_t, hot_t, fan_at, n_exec, trace)
        if fatal is not None:
            self.fatal = fatal
            self.failures.append(fatal)

    def _batch_overheads(self, prog: object, durations: np.ndarray, n: int) -> float:
        """Klipper batch mode's fixed times: the start buffer once, and the tail after a final flush."""
        extra = 0.0
        if self.totals.moves == 0 and self.totals.buckets.sum() == 0.0:
            extra += BATCH_START_S
        if n:
            # Batch mode's background flush adds the tail when motion ends in a forced flush, or when only
            # a move or two (under about a second) follow the last one.
            stops = np.flatnonzero((prog.flags[:n] & F_STOP_BEFORE) != 0)
            first = int(stops[-1]) if stops.size else 0
            since = float(durations[first:].sum())
            if prog.ends_with_stop or n - first <= 1 or since < 1.0:
                extra += BATCH_TAIL_S
        return extra

    def _commands(self, program: str | os.PathLike[str] | bytes | Iterable[Command], name: str | None,
                  progress: Callable[[int, int], None] | None
                  ) -> tuple[Iterable[Command], GcodeReader | None]:
        if isinstance(program, (bytes, str, os.PathLike)):
            # Every backend's one path-or-text rule (a file is streamed, not read whole).
            path = program_path(program)
            is_path = path is not None
            if path is not None and not path.is_file():
                raise GcodeError(str(program), 0, "no such file")
            source = path if path is not None else program
            # A Prunt printer reads its files as Prunt does and stops at the first line Prunt refuses.
            if self.profile.firmware == "prunt":
                from sim_bridge.prunt_reader import PruntReader  # loaded for Prunt printers only

                reader: GcodeReader = PruntReader(source, name=name, limits=limits_of(self.profile))
            else:
                reader = GcodeReader(source, name=name, keep_comments=True)
            if progress is not None and is_path:
                reader.progress = progress
            return reader, reader
        return program, None

    def _timeline(self, durations: np.ndarray, de: np.ndarray, ev_idx: np.ndarray, ev_kind: np.ndarray,
                  ev_value: np.ndarray) -> tuple:
        opts = self.options
        known = float(durations.sum()) + float(ev_value[(ev_kind == 4) | (ev_kind == 5) | (ev_kind == 7)].sum())
        waits = int(np.count_nonzero((ev_kind == 2) | (ev_kind == 3) | (ev_kind == 8)))
        cap = 0
        if opts.traces and opts.trace_interval_s > 0:
            cap = int((known + waits * min(opts.heater_wait_limit_s, 900.0)) / opts.trace_interval_s) + 4
            cap = min(cap, 2_000_000)
            if self.time_s == 0.0 and self._trace_next[1] == 0.0:
                self._trace_next[1] = 0.0
        trace = np.zeros((cap, 7))
        tn = np.array([0.0, self._trace_next[1]])
        result = run_timeline(durations, de, ev_idx, ev_kind, ev_value, self.hot_params, self.hot,
                              self.bed_params, self.bed, self.time_s, self.fan, self.profile.ambient_temp_c,
                              opts.thermal_dt_s, self.profile.firmware == "marlin", opts.klipper_batch_mode,
                              opts.heater_wait_limit_s, trace, tn, opts.trace_interval_s if opts.traces else 0.0)
        self._trace_next[1] = tn[1]
        return (*result, trace[: int(tn[0])])

    def _heater_failure(self, kind: int, line: int, prog: object) -> Failure:
        if kind in (FAULT_HOTEND, FAULT_BED):
            name = HEATER_NAMES[kind]
            return Failure(fail.THERMAL_RUNAWAY, f"Heater {name} not heating at expected rate", line,
                           self.state.layer, fatal=True)
        name = "heater_bed" if kind == FAULT_TIMEOUT_BED else "extruder"
        return Failure(fail.HEATER_TIMEOUT, f"Heater {name} did not reach its target within "
                       f"{self.options.heater_wait_limit_s:.0f} s", line, self.state.layer, fatal=True)

    def _finish_moves(self, prog: object, profile: np.ndarray, move_d: np.ndarray, durations: np.ndarray,
                      start_t: np.ndarray, hot_t: np.ndarray, fan_at: np.ndarray, n: int,
                      trace: np.ndarray) -> None:
        p = self.profile
        xyz = prog.xyz[:n]
        de = prog.de[:n]
        flags = prog.flags[:n]
        layer = prog.layer[:n]
        line = prog.line[:n]
        move_d = move_d[:n]
        durations = durations[:n]
        extruding = (flags & F_EXTRUDE) != 0
        kinematic = (flags & F_KINEMATIC) != 0
        # Melt capacity: flow above what the hotend melts at its temperature is not delivered.
        with np.errstate(divide="ignore", invalid="ignore"):
            flow = np.where(extruding, profile[:n, 1] * de * p.filament_area_mm2 * self.extrusion_scale
                            / np.maximum(move_d, 1e-12), 0.0)
        true_t = hot_t[:n] + self.hotend_offset_c
        capacity = melt_capacity_mm3_s(p, self.material, true_t)
        if self.options.klipper_batch_mode:
            delivered = np.ones(n)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                delivered = np.where(flow > capacity, capacity / np.where(flow > 0, flow, 1.0), 1.0)
        volume = np.where(extruding, de * p.filament_area_mm2 * self.extrusion_scale * delivered, 0.0)
        # Layer heights from the layer z table.
        zs = self.layer_z
        ks, which = np.unique(layer, return_inverse=True)
        heights = [0.0 if k < 0 else zs[k] - zs[k - 1] if k - 1 in zs else zs.get(k, 0.2) for k in ks.tolist()]
        layer_h = np.asarray(heights, dtype=np.float64)[which.reshape(-1)] if n else np.zeros(0)
        starts = prog.starts[:n]
        if self.options.deposition and n:
            hm = self.heightmap
            defects, width, unsupported, self._run_open, self._adrift_open = dep.deposit(
                hm.heights, hm.x0_mm, hm.y0_mm, hm.resolution_mm, starts, xyz, volume, flags, layer, layer_h, fan_at[:n],
                p.nozzle_diameter_mm, self._tan_overhang, self.material.max_bridge_mm,
                self.options.collision_tolerance_mm, self.options.first_layer_min_gap_mm, self._first_max,
                self._support_gap, self.material.wants_cooling, self._run_open,
                self.material.max_uncooled_span_mm, self._adrift_open)
        else:
            defects = np.zeros(n, dtype=np.int64)
            width = np.zeros(n)
            unsupported = np.zeros(n)
        self._collect_failures(defects, delivered, extruding, layer, line)
        self._collect_layers(layer, line, durations, de, move_d, width, extruding, kinematic, flow, delivered,
                             unsupported, defects, xyz)
        # Filament: the highest cumulative E reached is what left the spool.
        if n:
            cum = self.e_total + np.cumsum(de)
            self.e_max = max(self.e_max, float(cum.max()))
            self.e_total = float(cum[-1])
            ext = extruding
            if ext.any():
                pts = np.vstack([starts[ext], xyz[ext]])
                self.totals.bbox_lo = np.minimum(self.totals.bbox_lo, pts.min(axis=0))
                self.totals.bbox_hi = np.maximum(self.totals.bbox_hi, pts.max(axis=0))
        self.totals.moves += n
        self.executed.append(ExecutedMoves(starts.copy(), xyz.copy(), de.copy(), flags.copy(), layer.copy(),
                                           line.copy(), width, start_t[:n].copy(), durations.copy(), delivered))
        if len(trace):
            self._add_traces(trace, starts, xyz, start_t[:n], durations, flow, delivered, de)

    def _collect_failures(self, defects: np.ndarray, delivered: np.ndarray, extruding: np.ndarray,
                          layer: np.ndarray, line: np.ndarray) -> None:
        for bit, mode, msg in WARNING_MESSAGES:
            self.warnings.extend(Failure(mode, msg, int(line[sel[0]]), lay, fatal=False, count=int(sel.size))
                                 for lay, sel in _by_layer(np.flatnonzero((defects & bit) != 0), layer))
        masks = [(bit, mode, msg, (defects & bit) != 0) for bit, mode, msg in DEFECT_MESSAGES]
        under = extruding & (delivered < self.options.under_extrusion_threshold)
        masks.append((0, fail.UNDER_EXTRUSION, "Under-extrusion: flow above the hotend's melt capacity", under))
        found: list[Failure] = []
        for _bit, mode, msg, mask in masks:
            for lay, sel in _by_layer(np.flatnonzero(mask), layer):
                first = int(sel[0])
                detail = msg
                if mode == fail.UNDER_EXTRUSION:
                    detail = f"{msg} (delivered {delivered[sel].min() * 100:.0f}% at worst)"
                found.append(Failure(mode, detail, int(line[first]), lay, fatal=False, count=int(sel.size)))
        found.sort(key=lambda f: f.line)
        self.failures.extend(found)

    def _collect_layers(self, layer: np.ndarray, line: np.ndarray, durations: np.ndarray, de: np.ndarray,
                        move_d: np.ndarray, width: np.ndarray, extruding: np.ndarray, kinematic: np.ndarray,
                        flow: np.ndarray, delivered: np.ndarray, unsupported: np.ndarray, defects: np.ndarray,
                        xyz: np.ndarray) -> None:
        sel = layer >= 0
        if not sel.any():
            return
        idx = layer[sel]
        size = int(idx.max()) + 1

        def per_layer(values: np.ndarray) -> np.ndarray:
            return np.bincount(idx, weights=values[sel], minlength=size)

        under = extruding & (delivered < self.options.under_extrusion_threshold)
        time_s = per_layer(durations)
        filament = per_layer(np.where(extruding, de, 0.0))
        delivered_mm = per_layer(np.where(extruding, de * delivered, 0.0))
        path = per_layer(np.where(extruding, move_d, 0.0))
        area = per_layer(np.where(extruding, width * move_d, 0.0))
        unsupported_mm = per_layer(unsupported)
        failures = per_layer(((defects != 0) | under).astype(np.float64))
        max_flow = np.zeros(size)
        np.maximum.at(max_flow, idx, np.where(extruding, flow, 0.0)[sel])
        present, first = np.unique(idx, return_index=True)
        lines = line[sel][first]
        z_first = xyz[sel][first, 2]
        for k, first_line, z in zip(present.tolist(), lines.tolist(), z_first.tolist(), strict=True):
            metrics = self.layers.get(k)
            if metrics is None:
                metrics = LayerMetrics(k, float(self.layer_z.get(k, z)), int(first_line))
                self.layers[k] = metrics
            old_filament = metrics.filament_mm
            metrics.time_s += float(time_s[k])
            metrics.filament_mm += float(filament[k])
            if filament[k] > 0.0:
                metrics.delivered_fraction = (metrics.delivered_fraction * old_filament + float(delivered_mm[k])) / (
                    metrics.filament_mm)
            metrics.extruded_path_mm += float(path[k])
            metrics.deposited_area_mm2 += float(area[k])
            metrics.max_flow_mm3_s = max(metrics.max_flow_mm3_s, float(max_flow[k]))
            metrics.unsupported_path_mm += float(unsupported_mm[k])
            metrics.failures += int(failures[k])

    def _add_traces(self, trace: np.ndarray, starts: np.ndarray, xyz: np.ndarray, start_t: np.ndarray,
                    durations: np.ndarray, flow: np.ndarray, delivered: np.ndarray, de: np.ndarray) -> None:
        n = len(xyz)
        idx = trace[:, 6].astype(np.int64)
        t = trace[:, 0]
        pos = np.zeros((len(trace), 4))
        fl = np.zeros(len(trace))
        e_cum = self.e_total - (np.cumsum(de[::-1])[::-1] if n else 0.0)
        if n:
            valid = idx < n
            i = np.clip(idx, 0, n - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.clip(np.where(durations[i] > 0, (t - start_t[i]) / durations[i], 1.0), 0.0, 1.0)
            frac = np.where(valid, frac, 1.0)
            pos[:, :3] = starts[i] + (xyz[i] - starts[i]) * frac[:, None]
            pos[:, 3] = e_cum[i] + de[i] * frac
            inside = valid & (frac < 1.0)
            fl = np.where(inside, flow[i] * delivered[i], 0.0)
        else:
            pos[:, :3] = self.state.pos[:3]
        self._trace_rows.append(trace)
        self._trace_pos.append(pos)
        self._trace_flow.append(fl)

    # -- reporting -------------------------------------------------------------------------------------
    def report(self) -> PrintReport:
        """The cumulative report of everything run so far."""
        b = self.totals.buckets
        breakdown = {"motion": float(b[0]), "dwell": float(b[1]), "heating": float(b[2]), "homing": float(b[3])}
        filament_mm = self.e_max
        area = self.profile.filament_area_mm2
        lo, hi = self.totals.bbox_lo, self.totals.bbox_hi
        bbox = {"min": [float(v) for v in lo], "max": [float(v) for v in hi]} if np.isfinite(lo).all() else {
            "min": [], "max": []}
        layers = [self.layers[k] for k in sorted(self.layers)]
        traces = None
        if self.options.traces:
            traces = self._traces_dict()
        final = self.final_state()
        return PrintReport(
            success=not self.failures, failures=list(self.failures), print_time_s=float(sum(breakdown.values())),
            time_breakdown_s=breakdown, filament_mm=filament_mm, filament_mm3=filament_mm * area,
            filament_g=filament_mm * area * self.material.density_g_cm3 / 1000.0,
            layer_count=len(self.layers), bbox_mm=bbox, layers=layers, notices=list(self.notices),
            warnings=list(self.warnings),
            printer=self.profile.name, material=self.material.name, planner=self.planner,
            firmware=self.profile.firmware,
            lines=self.totals.lines, commands=self.totals.commands, moves=self.totals.moves,
            stopped_at_line=self.fatal.line if self.fatal else None, final_state=final, traces=traces)

    def final_state(self) -> dict[str, Any]:
        """The printer's state now: position, homing, heaters, fan, clock, layer (the report's ``final_state``)."""
        return {
            "position_mm": [float(v) for v in self.state.pos[:3]],
            "homed": list(self.state.homed),
            "hotend_c": float(self.hot[S_TEMP]),
            "hotend_target_c": float(self.hot[S_TARGET]),
            "bed_c": float(self.bed[S_TEMP]),
            "bed_target_c": float(self.bed[S_TARGET]),
            "fan": float(self.fan),
            "time_s": float(self.time_s),
            "layer": int(self.state.layer),
        }

    def _traces_dict(self) -> dict[str, list[float]]:
        if not self._trace_rows:
            return {k: [] for k in ("t_s", "hotend_c", "hotend_target_c", "bed_c", "bed_target_c", "fan",
                                    "flow_mm3_s", "x_mm", "y_mm", "z_mm", "e_mm")}
        rows = np.vstack(self._trace_rows)
        pos = np.vstack(self._trace_pos)
        flow = np.concatenate(self._trace_flow)
        return {
            "t_s": rows[:, 0].tolist(), "hotend_c": rows[:, 1].tolist(), "hotend_target_c": rows[:, 2].tolist(),
            "bed_c": rows[:, 3].tolist(), "bed_target_c": rows[:, 4].tolist(), "fan": rows[:, 5].tolist(),
            "flow_mm3_s": flow.tolist(), "x_mm": pos[:, 0].tolist(), "y_mm": pos[:, 1].tolist(),
            "z_mm": pos[:, 2].tolist(), "e_mm": pos[:, 3].tolist(),
        }


def _by_layer(idx: np.ndarray, layer: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The moves ``idx`` grouped by layer, in program order within each group (one stable sort, not a
    pass over the moves per layer)."""
    order = np.argsort(layer[idx], kind="stable")
    lays, begin, count = np.unique(layer[idx][order], return_index=True, return_counts=True)
    for lay, b, c in zip(lays.tolist(), begin.tolist(), count.tolist(), strict=True):
        yield lay, idx[order[b:b + c]]


def simulate(program: str | os.PathLike[str] | bytes | Iterable[Command],
             printer: PrinterProfile | str = "ender3-klipper", material: Material | str = "PLA",
             options: SimOptions | None = None, **option_overrides: object) -> PrintReport:
    """Simulate a whole program on a fresh printer.

    >>> r = simulate("G28\\nM104 S200\\nM109 S200\\nG1 X10 Y10 Z0.2 F3000\\nG1 X30 E1 F1200\\n")
    >>> r.success, r.layer_count
    (True, 1)
    """
    if option_overrides:
        from dataclasses import replace

        options = replace(options or SimOptions(), **option_overrides)
    return Simulator(printer, material, options).run(program)
