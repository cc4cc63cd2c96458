"""The print-success prediction report: ``prediction.md``, ``prediction.json`` and the calibration and
abstain curves (one figure) of :func:`training.predict.score`'s results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.eval_stats import abstain_curve, calibration, json_safe


def _result_dict(r: Any) -> dict[str, Any]:
    m = r.success
    return {"predictor": r.predictor, "test_set": r.test_set, "n": m.n, "accuracy": m.accuracy.as_dict(),
            "roc_auc": m.roc_auc, "brier": m.brier, "false_block_rate": m.false_block_rate.as_dict(),
            "missed_failure_rate": m.missed_failure_rate.as_dict(), "localisation": r.localisation.as_dict(),
            "modes": [vars(x) for x in r.modes]}


def write_prediction_report(results: Sequence[Any], out: Path) -> None:
    """``prediction.json``, ``prediction.md``, a calibration plot and an abstain curve in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction.json").write_text(json.dumps(json_safe([_result_dict(r) for r in results]), indent=2) + "\n")
    lines = ["# Print-success prediction and failure-mode detection", "",
             "| test set | predictor | n | accuracy [95 %] | ROC-AUC | Brier | false blocks | missed failures | "
             "first line placed |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        m = r.success
        loc = "—" if r.localisation.n == 0 else f"{r.localisation.value:.3f} (n {r.localisation.n})"
        lines.append(f"| {r.test_set} | {r.predictor} | {m.n} | {m.accuracy} | {m.roc_auc:.3f} | {m.brier:.3f} | "
                     f"{m.false_block_rate.value:.3f} | {m.missed_failure_rate.value:.3f} | {loc} |")
    lines += ["", "Per failure mode (precision / recall / F1, support):", "",
              "| test set | predictor | mode | precision | recall | F1 | support |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        for x in r.modes:
            if x.support:
                lines.append(f"| {r.test_set} | {r.predictor} | {x.mode} | {x.precision:.3f} | {x.recall:.3f} | "
                             f"{x.f1:.3f} | {x.support} |")
    lines += ["", "![calibration (left) and abstain curve (right)](calibration.png)", ""]
    (out / "prediction.md").write_text("\n".join(lines), encoding="utf-8")
    fig, (cal, abst) = plt.subplots(1, 2, figsize=(10, 4))
    cal.plot([0, 1], [0, 1], color="0.7", lw=1)
    for r in results:
        points = calibration(r.p_success, r.succeeded)
        cal.plot([p for p, _, _ in points], [o for _, o, _ in points], marker="o", label=f"{r.test_set}: {r.predictor}")
        curve = abstain_curve(r.p_success, r.succeeded)
        abst.plot([c for _, c, _ in curve], [a for _, _, a in curve], marker="o", label=f"{r.test_set}: {r.predictor}")
    cal.set_xlabel("predicted probability of success")
    cal.set_ylabel("observed success rate")
    abst.set_xlabel("coverage (decided without a person)")
    abst.set_ylabel("accuracy of the decided")
    cal.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)
