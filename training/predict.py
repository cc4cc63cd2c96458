"""Print-success prediction and failure-mode detection: given a program, will it print, and if not, which
failure modes and where?

A *test set* is a list of :class:`Labelled` programs (the outcome known); a *predictor* maps a program to a
:class:`Prediction` (a probability of success, the failure modes it expects, the line of the first). The
predictors compared (docs/evaluation.md):

* ``validator`` — the static safety validator alone (:func:`safety.validator.validate`): allow or block;
* ``embedded`` — the embedded simulator's verdict (on simulated data it *is* the label source, so its row
  there is the ceiling, not a result);
* ``klipper-batch`` — the real Klipper host in batch mode (on Klippy-labelled data the label source);
* ``classifier`` — gradient-boosted trees on static features of the program (:func:`static_features`, one
  pass of the reader, no simulation), trained on the training split of a labelled dataset (the trees'
  probabilities, not recalibrated), and one classifier per failure mode seen often enough;
* ``first-layer`` — the same trees on the static features plus the first layer's telemetry
  (:mod:`training.first_layer`): what is known once the gate's first-layer stage has printed it;
* ``critic`` — a language model fine-tuned to answer "will it print?" (:mod:`training.predict_critic`,
  with ``--critic MODEL``), through the same SFT adapter as the writer;
* ``writer`` — the writer model's own likelihood of the program (:mod:`training.predict_writer`, with
  ``--writer RUN``), mapped to a probability by a logistic regression fitted on the training split.

Test sets: :func:`simulated_programs` (the ``programs`` table of a ``training.make_dataset`` dataset with
injected defects: labels from the embedded simulator; by split, so the classifier's test parts were never
trained on) and :func:`klippy_labelled` (files labelled by real Klippy: accept/reject and the first error).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safety.advisory import Advisory
from safety.validator import validate
from sim_bridge.backends import EMBEDDED, KLIPPER_BATCH, simulate
from sim_bridge.gcode import GcodeError, GcodeReader, parse_line
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile
from training.data import load_table
from training.datafmt import DatasetError, read_manifest
from training.defects import DEFECTS
from training.eval_stats import (
    ModeMetrics,
    PredictionMetrics,
    choose_abstain_band,
    localisation_accuracy,
    mode_metrics,
    prediction_metrics,
)
from training.first_layer import first_layer_telemetry
from training.make_dataset import DatasetConfig, make_dataset
from training.predict_report import write_prediction_report

PREDICTORS = ("validator", EMBEDDED, KLIPPER_BATCH, "classifier", "first-layer", "critic", "writer")
"""The predictors :func:`predictor` makes, by name."""
MODE_MIN_POSITIVES = 5
"""A failure mode gets its own classifier when the training programs show it at least this often."""
LOCALISATION_TOLERANCE_LINES = 0
"""A first failure is placed correctly when the predicted line is the real one."""


@dataclass
class Labelled:
    """A program with its known outcome."""

    name: str
    gcode: str
    printer: str
    """A bundled printer name or a profile/config path."""
    success: bool
    modes: set[str] = field(default_factory=set)
    """The failure modes that happened (fatal or not)."""
    first_line: int | None = None
    """Line of the first fatal failure (None when none)."""
    material: str = "PLA"


@dataclass
class Prediction:
    """What a predictor expects of one program."""

    p_success: float
    modes: set[str] = field(default_factory=set)
    first_line: int | None = None


Predictor = Callable[[Labelled], Prediction]


# -- test sets -----------------------------------------------------------------------------------------------------
def simulated_programs(dataset: str | Path, split: str | None = "test") -> list[Labelled]:
    """The programs of a dataset made by ``training.make_dataset`` (reference programs and their injected
    defects), labelled by the embedded simulator when the dataset was made; ``split`` keeps one split."""
    out = []
    for row in load_table(dataset, "programs", split=split):
        failures = row["failures"] or []
        fatal = [f["line"] for f in failures if f["fatal"]]
        out.append(Labelled(name=row["record_id"], gcode=row["gcode"], printer=row["printer"],
                            success=bool(row["success"]), modes={f["mode"] for f in failures},
                            first_line=min(fatal) if fatal else None,
                            material=str(json.loads(row["job"]).get("material") or "PLA")))
    return out


def klippy_labelled(files: Sequence[tuple[Path, str]]) -> list[Labelled]:
    """``(G-code file, printer)`` pairs labelled by the real Klipper host (``klipper-batch``): success is
    Klippy accepting the whole file; the first error's mode and line."""
    out = []
    for path, printer in files:
        report = simulate(path, printer, backend=KLIPPER_BATCH)
        klippy = [f for f in report.failures if f.source == KLIPPER_BATCH and f.fatal]
        out.append(Labelled(name=path.name, gcode=path.read_text(encoding="utf-8", errors="replace"),
                            printer=printer, success=not klippy, modes={f.mode for f in klippy},
                            first_line=min((f.line for f in klippy), default=None)))
    return out


# -- predictors ----------------------------------------------------------------------------------------------------
def _profile(printer: str, cache: dict[str, PrinterProfile]) -> PrinterProfile:
    if printer not in cache:
        cache[printer] = load_printer(printer)
    return cache[printer]


def validator_predictor() -> Predictor:
    """Allow (1.0) or block (0.0) by the static validator; its rules as modes, its first finding's line."""
    profiles: dict[str, PrinterProfile] = {}

    def predict(item: Labelled) -> Prediction:
        verdict = validate(item.gcode, _profile(item.printer, profiles), name=item.name)
        lines = [v.line for v in verdict.violations]
        return Prediction(1.0 if verdict.allowed else 0.0, verdict.rules(), min(lines) if lines else None)

    return predict


def simulator_predictor(backend: str = EMBEDDED) -> Predictor:
    """The simulator's (or the real host's) verdict: success 1.0 or 0.0, its failure modes, its first fatal
    failure's line."""
    profiles: dict[str, PrinterProfile] = {}

    def predict(item: Labelled) -> Prediction:
        report = simulate(item.gcode, _profile(item.printer, profiles), backend=backend, material=item.material)
        fatal = [f.line for f in report.failures if f.fatal]
        return Prediction(1.0 if report.success else 0.0, {f.mode for f in report.failures},
                          min(fatal) if fatal else None)

    return predict


FEATURES = ("lines", "moves", "extruding_moves", "max_feed_mm_s", "median_feed_mm_s", "x_min_frac", "x_max_frac",
            "y_min_frac", "y_max_frac", "z_max_frac", "first_extrusion_z_mm", "median_z_step_mm",
            "e_per_mm_median", "e_per_mm_max", "retracts", "hotend_target_max_c", "hotend_waited",
            "extrusion_before_heat_wait", "bed_target_max_c", "fan_commands", "fan_max", "homed_before_move",
            "unreadable")
"""What :func:`static_features` measures, in its order."""


def static_features(gcode: str, profile: PrinterProfile) -> np.ndarray:
    """One reader pass over ``gcode``: sizes, feeds, extents as fractions of the bed, extrusion per mm of
    travel, retracts, temperatures set and waited for, fan, homing; no simulation."""
    x = y = z = e_total = 0.0
    absolute_e = True
    feeds, e_per_mm, z_steps = [], [], []
    f = {k: 0.0 for k in FEATURES}
    xs, ys, zs = [], [], []
    first_e_z = math.nan
    heat_waited = homed = False
    last_layer_z = None
    try:
        for line_no, raw in GcodeReader(gcode).numbered_lines():
            f["lines"] = line_no
            cmd = parse_line(raw, line_no)
            if cmd is None or not cmd.code:
                continue
            p, code = cmd.params, cmd.code
            if code in ("G0", "G1"):
                f["moves"] += 1
                if "F" in p and p["F"] == p["F"]:
                    feeds.append(p["F"] / 60.0)
                nx, ny, nz = (v if (v := p.get(k, old)) == v else old for k, old in (("X", x), ("Y", y), ("Z", z)))
                de = 0.0
                if "E" in p and p["E"] == p["E"]:
                    de = p["E"] - e_total if absolute_e else p["E"]
                    e_total = p["E"] if absolute_e else e_total + p["E"]
                dist = math.hypot(nx - x, ny - y)
                if de > 0 and dist > 0:
                    f["extruding_moves"] += 1
                    e_per_mm.append(de / dist)
                    if math.isnan(first_e_z):
                        first_e_z = nz
                        f["extrusion_before_heat_wait"] = float(not heat_waited)
                elif de < 0:
                    f["retracts"] += 1
                if not homed and ("X" in p or "Y" in p or "Z" in p):
                    f["homed_before_move"] = 0.0
                if nz != z and de >= 0 and last_layer_z is not None and nz > last_layer_z:
                    z_steps.append(nz - last_layer_z)
                if nz != z:
                    last_layer_z = nz
                x, y, z = nx, ny, nz
                xs.append(x)
                ys.append(y)
                zs.append(z)
            elif code == "G28":
                homed = True
                f["homed_before_move"] = 1.0 if f["moves"] == 0 else f["homed_before_move"]
            elif code == "M82":
                absolute_e = True
            elif code == "M83":
                absolute_e = False
            elif code == "G92" and "E" in p:
                e_total = p["E"] if p["E"] == p["E"] else 0.0
            elif code in ("M104", "M109"):
                f["hotend_target_max_c"] = max(f["hotend_target_max_c"], p.get("S", 0.0) or 0.0)
                heat_waited = heat_waited or code == "M109"
                f["hotend_waited"] = float(heat_waited)
            elif code in ("M140", "M190"):
                f["bed_target_max_c"] = max(f["bed_target_max_c"], p.get("S", 0.0) or 0.0)
            elif code == "M106":
                f["fan_commands"] += 1
                f["fan_max"] = max(f["fan_max"], p.get("S", 255.0) or 0.0)
    except GcodeError:
        f["unreadable"] = 1.0
    bed_x, bed_y, bed_z = (max(v, 1.0) for v in profile.position_max_mm)
    if xs:
        f["x_min_frac"], f["x_max_frac"] = min(xs) / bed_x, max(xs) / bed_x
        f["y_min_frac"], f["y_max_frac"] = min(ys) / bed_y, max(ys) / bed_y
        f["z_max_frac"] = max(zs) / bed_z
    f["max_feed_mm_s"] = max(feeds, default=0.0)
    f["median_feed_mm_s"] = float(np.median(feeds)) if feeds else 0.0
    f["first_extrusion_z_mm"] = 0.0 if math.isnan(first_e_z) else first_e_z
    f["median_z_step_mm"] = float(np.median(z_steps)) if z_steps else 0.0
    f["e_per_mm_median"] = float(np.median(e_per_mm)) if e_per_mm else 0.0
    f["e_per_mm_max"] = max(e_per_mm, default=0.0)
    return np.array([f[k] for k in FEATURES], dtype=float)


class FeatureClassifier:
    """Gradient-boosted trees (scikit-learn) on :func:`static_features`: one classifier for
    success, one per failure mode with at least :data:`MODE_MIN_POSITIVES` training examples. No line
    localisation (it reads whole-program features)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._profiles: dict[str, PrinterProfile] = {}
        self.success_model: Any = None
        self.mode_models: dict[str, Any] = {}

    def features(self, items: Sequence[Labelled]) -> np.ndarray:
        return np.stack([static_features(i.gcode, _profile(i.printer, self._profiles)) for i in items])

    def _model(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=self.seed)

    def fit(self, items: Sequence[Labelled]) -> FeatureClassifier:
        if len({i.success for i in items}) < 2:
            raise ValueError(f"{len(items)} training programs, all {'successes' if items[0].success else 'failures'}"
                             ": the success classifier needs both outcomes")
        x = self.features(items)
        self.success_model = self._model().fit(x, [i.success for i in items])
        for mode in sorted(set().union(*(i.modes for i in items))):
            labels = [mode in i.modes for i in items]
            if MODE_MIN_POSITIVES <= sum(labels) < len(labels):
                self.mode_models[mode] = self._model().fit(x, labels)
        return self

    def __call__(self, item: Labelled) -> Prediction:
        if self.success_model is None:
            raise RuntimeError("FeatureClassifier.fit first")
        x = self.features([item])
        p = float(self.success_model.predict_proba(x)[0][list(self.success_model.classes_).index(True)])
        modes = {m for m, model in self.mode_models.items()
                 if model.predict_proba(x)[0][list(model.classes_).index(True)] >= 0.5}
        return Prediction(p, modes, None)


class FirstLayerClassifier(FeatureClassifier):
    """:class:`FeatureClassifier` on the static features and the first layer's telemetry
    (:func:`training.first_layer.first_layer_telemetry`): will the rest print, once the first layer has?"""

    def features(self, items: Sequence[Labelled]) -> np.ndarray:
        first = [first_layer_telemetry(i.gcode, _profile(i.printer, self._profiles), i.material) for i in items]
        return np.hstack([super().features(items), np.stack(first)])


ADVISOR_FORMAT = "layerloop-advisor-1"
ADVISOR_TARGET_ACCURACY = 0.95
"""The abstain band saved with a classifier is the narrowest whose decided held-out programs reach this."""


class Advisor:
    """A fitted :class:`FeatureClassifier` with its abstain band: turns a program into the
    :class:`safety.advisory.Advisory` the approval console shows. Saved by ``python -m training.predict
    --save-classifier FILE`` (a pickle: load only files you made)."""

    def __init__(self, classifier: FeatureClassifier, band: tuple[float, float], basis: str) -> None:
        self.classifier, self.band, self.basis = classifier, band, basis

    def __call__(self, gcode: str, printer: str) -> Advisory:
        p = self.classifier(Labelled("advised", gcode, printer, success=True)).p_success
        return Advisory("classifier (gradient-boosted trees on static features, training.predict)",
                        min(1.0, max(0.0, p)), self.band[0], self.band[1], self.basis)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"format": ADVISOR_FORMAT, "advisor": self}))

    @staticmethod
    def load(path: Path) -> Advisor:
        try:
            data = pickle.loads(Path(path).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ValueError(f"advisor {path}: not readable ({exc}); make one with python -m training.predict "
                             "--save-classifier FILE") from None
        if not isinstance(data, dict) or data.get("format") != ADVISOR_FORMAT:
            raise ValueError(f"advisor {path}: not a {ADVISOR_FORMAT} file (python -m training.predict "
                             "--save-classifier FILE makes one)")
        return data["advisor"]


def advisor_from(classifier: FeatureClassifier, held_out: PredictorResult, dataset: str) -> Advisor:
    """``classifier`` with the abstain band chosen on its held-out result (:data:`ADVISOR_TARGET_ACCURACY`)."""
    band = choose_abstain_band(held_out.p_success, held_out.succeeded, ADVISOR_TARGET_ACCURACY)
    m = prediction_metrics(held_out.p_success, held_out.succeeded, abstain=band)
    basis = (f"trained on dataset {dataset}; on {m.n} held-out programs, {m.coverage:.0%} fall outside the band "
             f"and {m.decided_accuracy.value:.0%} of those were predicted right")
    return Advisor(classifier, band, basis)


def predictor(name: str, train: Sequence[Labelled] = (), writer: str | None = None, critic: str | None = None,
              work_dir: Path | None = None) -> Predictor:
    """The predictor called ``name`` (:data:`PREDICTORS`); ``classifier``, ``first-layer``, ``writer`` (the
    model ``writer``: a run directory or model folder) and ``critic`` (fine-tuned from the model ``critic``
    in ``work_dir``) are fitted on ``train``."""
    if name == "validator":
        return validator_predictor()
    if name in (EMBEDDED, KLIPPER_BATCH):
        return simulator_predictor(name)
    if name == "classifier":
        return FeatureClassifier().fit(train)
    if name == "first-layer":
        return FirstLayerClassifier().fit(train)
    if name == "critic":
        if critic is None or work_dir is None:
            raise ValueError("predictor critic: give the model to fine-tune (--critic RUN_DIR or a model folder)")
        # torch, TRL and the model load only for this predictor
        from training.predict_critic import LLMCritic

        judge = LLMCritic(critic, work_dir).fit(train)
        return lambda item: Prediction(*judge.judge(item.gcode, item.printer))
    if name == "writer":
        if writer is None:
            raise ValueError("predictor writer: give the writer model (--writer RUN_DIR or a model folder)")
        # torch and the model load only for this predictor
        from training.predict_writer import WriterLikelihood

        likelihood = WriterLikelihood(writer).fit(train)
        return lambda item: Prediction(likelihood.probability(item.gcode))
    raise ValueError(f"predictor {name!r}: choose one of {', '.join(PREDICTORS)}")


# -- the table -----------------------------------------------------------------------------------------------------
@dataclass
class PredictorResult:
    """One predictor on one test set."""

    predictor: str
    test_set: str
    success: PredictionMetrics
    modes: list[ModeMetrics]
    localisation: Any
    """:class:`training.eval_stats.Estimate` of first-failure line placement (n = 0 when no line given)."""
    p_success: list[float]
    succeeded: list[bool]


def score(name: str, predict: Predictor, items: Sequence[Labelled], test_set: str) -> PredictorResult:
    """Run ``predict`` over ``items`` and measure it."""
    predictions = [predict(item) for item in items]
    p = [pr.p_success for pr in predictions]
    y = [item.success for item in items]
    lines = [pr.first_line for pr in predictions]
    localisation = localisation_accuracy(lines, [i.first_line for i in items], LOCALISATION_TOLERANCE_LINES) \
        if any(line is not None for line in lines) else localisation_accuracy([], [])
    return PredictorResult(name, test_set, prediction_metrics(p, y),
                           mode_metrics([pr.modes for pr in predictions], [i.modes for i in items]),
                           localisation, p, y)


# -- the command ---------------------------------------------------------------------------------------------------
def klippy_files(roots: Sequence[Path]) -> list[tuple[Path, str]]:
    """Every ``*.gcode`` under ``roots`` with the printer it was written for: a ``; printer: PATH`` line in its
    first lines (relative to the repository), ``corexy300``/``mk3s`` in its name, else the Ender 3 on
    Klipper."""
    repo = Path(__file__).resolve().parent.parent
    out = []
    for root in roots:
        for path in sorted(Path(root).rglob("*.gcode")) if Path(root).is_dir() else [Path(root)]:
            head = path.read_bytes()[:400].decode("utf-8", "replace").splitlines()[:3]
            named = [line.split(": ", 1)[1].strip() for line in head if line.startswith("; printer: ")]
            printer = str(repo / named[0]) if named else "corexy300-klipper" if "corexy300" in path.name \
                else "mk3s-marlin" if "mk3s" in path.name else "ender3-klipper"
            out.append((path, printer))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a training.make_dataset folder with defects "
                        "(made here with --jobs when missing)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs of the dataset when it has to be made")
    parser.add_argument("--klippy", type=Path, action="append", default=[],
                        help="G-code files or folders to label with the real Klipper host (repeatable)")
    parser.add_argument("--predictor", action="append", choices=PREDICTORS,
                        help="predictors to compare (default: validator, embedded, classifier, first-layer)")
    parser.add_argument("--out", type=Path, default=Path("eval/prediction"))
    parser.add_argument("--writer", metavar="RUN", help="a run directory or model folder: adds the writer "
                        "model's own likelihood as a predictor (--predictor writer)")
    parser.add_argument("--critic", metavar="MODEL", help="a run directory or model folder to fine-tune into an "
                        "LLM critic (--predictor critic; its checkpoints go to OUT/critic)")
    parser.add_argument("--save-classifier", type=Path, metavar="FILE",
                        help="save the trained classifier with the abstain band chosen on the held-out programs, "
                        "for the approval console's advisory (python -m training.write --advisor FILE)")
    args = parser.parse_args(argv)
    names = args.predictor or ["validator", EMBEDDED, "classifier", "first-layer"]
    if args.save_classifier and "classifier" not in names:
        names.append("classifier")
    if args.writer and "writer" not in names:
        names.append("writer")
    if args.critic and "critic" not in names:
        names.append("critic")

    try:
        read_manifest(args.dataset)
    except DatasetError:
        print(f"predict: making {args.jobs} jobs with injected defects in {args.dataset}", flush=True)
        make_dataset(DatasetConfig(name="predict", jobs=args.jobs, difficulties=[0, 1, 2], defects=sorted(DEFECTS),
                                   defects_per_job=2, traces=False, images=False, jobs_per_shard=max(1, args.jobs // 8)),
                     args.dataset)
    train = simulated_programs(args.dataset, "train")
    sets = {"simulated (held-out parts)": simulated_programs(args.dataset, "test")}
    if args.klippy:
        print("predict: labelling with the real Klipper host", flush=True)
        sets["real Klippy labels"] = klippy_labelled(klippy_files(args.klippy))
    results = []
    made: dict[str, Predictor] = {}
    for set_name, items in sets.items():
        for name in names:
            print(f"predict: {name} on {set_name} ({len(items)} programs)", flush=True)
            made[name] = made.get(name) or predictor(name, train, args.writer, args.critic, args.out / "critic")
            results.append(score(name, made[name], items, set_name))
    write_prediction_report(results, args.out)
    if args.save_classifier:
        held_out = next(r for r in results if r.predictor == "classifier")
        advisor = advisor_from(made["classifier"], held_out, str(args.dataset))  # type: ignore[arg-type]
        advisor.save(args.save_classifier)
        print(f"predict: saved the classifier to {args.save_classifier}: abstain band "
              f"[{advisor.band[0]:.2f}, {advisor.band[1]:.2f}); {advisor.basis}")
    print((args.out / "prediction.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
