"""Pictures of a simulated print: the top-view height map and the toolpath (PNG, via matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from sim_bridge.events import F_EXTRUDE  # noqa: E402
from sim_bridge.simulator import Simulator  # noqa: E402


def _extrusion_segments(sim: Simulator) -> tuple[np.ndarray, np.ndarray]:
    segs, zs = [], []
    for moves in sim.executed:
        ext = (moves.flags & F_EXTRUDE) != 0
        if ext.any():
            segs.append(np.stack([moves.starts[ext, :2], moves.xyz[ext, :2]], axis=1))
            zs.append(moves.xyz[ext, 2])
    if not segs:
        return np.zeros((0, 2, 2)), np.zeros(0)
    return np.concatenate(segs), np.concatenate(zs)


def _part_window(sim: Simulator, margin_mm: float = 5.0) -> tuple[float, float, float, float]:
    report_lo, report_hi = sim.totals.bbox_lo, sim.totals.bbox_hi
    if not np.isfinite(report_lo).all():
        x0, x1, y0, y1 = sim.heightmap.extent_mm
        return x0, x1, y0, y1
    return (report_lo[0] - margin_mm, report_hi[0] + margin_mm, report_lo[1] - margin_mm, report_hi[1] + margin_mm)


def render_rgb(sim: Simulator, width_px: int = 256) -> np.ndarray:
    """The height map of the part's area as an RGB array (for environments' ``render()``)."""
    hm = sim.heightmap
    x0, x1, y0, y1 = _part_window(sim)
    res = hm.resolution_mm
    i0, i1 = max(0, int((x0 - hm.x0_mm) / res)), min(hm.heights.shape[1], int((x1 - hm.x0_mm) / res) + 1)
    j0, j1 = max(0, int((y0 - hm.y0_mm) / res)), min(hm.heights.shape[0], int((y1 - hm.y0_mm) / res) + 1)
    window = hm.heights[j0:j1, i0:i1][::-1]
    if window.size == 0:
        return np.zeros((width_px, width_px, 3), dtype=np.uint8)
    top = float(window.max()) or 1.0
    cmap = plt.get_cmap("viridis")
    rgb = (cmap(window / top)[..., :3] * 255).astype(np.uint8)
    rgb[window <= 0] = (30, 30, 30)
    ys = np.linspace(0, rgb.shape[0] - 1, width_px).astype(int)
    xs = np.linspace(0, rgb.shape[1] - 1, width_px).astype(int)
    return rgb[ys][:, xs]


def save_plot(sim: Simulator, path: str | Path, title: str = "") -> Path:
    """Write a PNG with the top-view height map (left) and the toolpath coloured by Z (right)."""
    path = Path(path)
    fig, (ax_map, ax_path) = plt.subplots(1, 2, figsize=(12, 5.6), dpi=110)
    x0, x1, y0, y1 = _part_window(sim)
    hm = sim.heightmap
    ex0, ex1, ey0, ey1 = hm.extent_mm
    image = ax_map.imshow(np.ma.masked_less_equal(hm.heights, 0.0), origin="lower", cmap="viridis",
                          extent=(ex0, ex1, ey0, ey1), interpolation="nearest")
    ax_map.set_xlim(x0, x1)
    ax_map.set_ylim(y0, y1)
    ax_map.set_title("height map (top view)")
    ax_map.set_xlabel("X (mm)")
    ax_map.set_ylabel("Y (mm)")
    fig.colorbar(image, ax=ax_map, label="height (mm)")
    segs, zs = _extrusion_segments(sim)
    if len(segs):
        lines = LineCollection(segs, array=zs, cmap="plasma", linewidths=0.5)
        ax_path.add_collection(lines)
        fig.colorbar(lines, ax=ax_path, label="Z (mm)")
    for failure in sim.failures[:50]:
        for moves in sim.executed:
            hit = np.flatnonzero(moves.line == failure.line)
            if hit.size:
                x, y = moves.xyz[hit[0], :2]
                ax_path.plot([x], [y], "rx", markersize=8)
                break
    ax_path.set_xlim(x0, x1)
    ax_path.set_ylim(y0, y1)
    ax_path.set_aspect("equal")
    ax_path.set_title("toolpath (extrusion, coloured by Z; x = failure)")
    ax_path.set_xlabel("X (mm)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
