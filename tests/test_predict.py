"""Print-success prediction: predictors on hand-checked programs, real Klippy labels, the classifier and the
command's report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from safety.advisory import CALLS
from sim_bridge.printers import load_printer
from training.make_dataset import DatasetConfig, make_dataset
from training.predict import (
    FEATURES,
    Advisor,
    FeatureClassifier,
    Labelled,
    klippy_files,
    klippy_labelled,
    main,
    predictor,
    score,
    simulated_programs,
    static_features,
)

GOLDEN = Path(__file__).parent / "golden"
GOOD = (GOLDEN / "must_pass" / "minimal_square.gcode").read_text()
OFF_BED = (GOLDEN / "must_fail" / "move_out_of_range.gcode").read_text()  # fails at line 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "data"
    make_dataset(DatasetConfig(name="predict-test", jobs=40, difficulties=[0], defects_per_job=2, traces=False,
                               images=False, jobs_per_shard=10, workers=1), out, progress=False)
    return out


def test_validator_and_simulator_predict_and_place_the_failure() -> None:
    good, bad = Labelled("good", GOOD, "ender3-klipper", True), Labelled("bad", OFF_BED, "ender3-klipper", False)
    for name in ("validator", "embedded"):
        predict = predictor(name)
        assert predict(good).p_success == 1.0 and not predict(good).modes, name
        out = predict(bad)
        assert out.p_success == 0.0 and "move_out_of_range" in out.modes and out.first_line == 6, name


def test_static_features_by_hand() -> None:
    program = "G28\nM104 S205\nG1 X10 Y10 F6000\nM109 S205\nG1 X20 E1.0 F1200\nG1 E-0.8\nM106 S128\n"
    f = dict(zip(FEATURES, static_features(program, load_printer("ender3-klipper")), strict=True))
    assert f["lines"] == 7 and f["moves"] == 3 and f["extruding_moves"] == 1 and f["retracts"] == 1
    assert f["max_feed_mm_s"] == 100.0 and f["e_per_mm_max"] == pytest.approx(0.1)  # 1 mm of E over 10 mm
    assert f["hotend_target_max_c"] == 205 and f["hotend_waited"] == 1.0 and f["extrusion_before_heat_wait"] == 0.0
    assert f["homed_before_move"] == 1.0 and f["fan_max"] == 128
    assert f["x_max_frac"] == pytest.approx(20 / load_printer("ender3-klipper").position_max_mm[0])
    cold = dict(zip(FEATURES, static_features("G28\nG1 X20 E1 F600\nM109 S200\n", load_printer("ender3-klipper")),
                    strict=True))
    assert cold["extrusion_before_heat_wait"] == 1.0


def test_simulated_programs_carry_the_simulators_labels_by_split(dataset: Path) -> None:
    train, test = simulated_programs(dataset, "train"), simulated_programs(dataset, "test")
    assert train and test and not {i.name for i in train} & {i.name for i in test}
    assert any(i.success for i in train) and any(not i.success for i in train)
    # The embedded simulator made the labels, so it predicts them exactly: the ceiling row.
    ceiling = score("embedded", predictor("embedded"), test, "simulated")
    assert ceiling.success.accuracy.value == 1.0
    assert all(i.modes for i in test if not i.success)


def test_classifier_learns_from_the_training_split(dataset: Path) -> None:
    train, test = simulated_programs(dataset, "train"), simulated_programs(dataset, "test")
    model = FeatureClassifier().fit(train)
    result = score("classifier", model, test, "simulated")
    probabilities = np.array(result.p_success)
    assert ((probabilities >= 0) & (probabilities <= 1)).all() and len(probabilities) == len(test)
    # On its own training programs the trees separate successes from failures.
    fitted = score("classifier", model, train, "train")
    assert fitted.success.roc_auc > 0.9, fitted.success.roc_auc
    with pytest.raises(ValueError, match="all successes"):
        FeatureClassifier().fit([i for i in train if i.success])


def test_real_klippy_labels(tmp_path: Path) -> None:
    files = klippy_files([GOLDEN / "must_pass" / "minimal_square.gcode", GOLDEN / "must_fail" / "move_out_of_range.gcode"])
    assert [p for _, p in files] == ["ender3-klipper", "ender3-klipper"]
    good, bad = klippy_labelled(files)
    assert good.success and not good.modes and good.first_line is None
    assert not bad.success and bad.modes == {"move_out_of_range"} and bad.first_line == 6


def test_the_command_writes_one_table(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dataset", str(dataset), "--out", str(tmp_path / "out"), "--predictor", "validator",
                 "--predictor", "classifier", "--klippy", str(GOLDEN / "must_fail" / "move_out_of_range.gcode"),
                 "--klippy", str(GOLDEN / "must_fail" / "cold_extrusion.gcode")]) == 0
    rows = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert [(r["test_set"], r["predictor"]) for r in rows] == [
        ("simulated (held-out parts)", "validator"), ("simulated (held-out parts)", "classifier"),
        ("real Klippy labels", "validator"), ("real Klippy labels", "classifier")]
    klippy_validator = rows[2]
    # Klippy in batch mode has no heaters: it runs the cold extrusion the validator blocks (a false block
    # against Klippy's label) and stops at the move off the bed, as the validator does.
    assert klippy_validator["n"] == 2 and klippy_validator["accuracy"]["value"] == 0.5
    assert klippy_validator["false_block_rate"]["value"] == 1.0 and klippy_validator["missed_failure_rate"]["value"] == 0
    assert (tmp_path / "out" / "calibration.png").is_file() and "| real Klippy labels | validator |" in \
        capsys.readouterr().out


def test_the_saved_classifier_advises_with_the_band_chosen_on_held_out_programs(dataset: Path, tmp_path: Path) -> None:
    assert main(["--dataset", str(dataset), "--out", str(tmp_path / "out"), "--predictor", "validator",
                 "--save-classifier", str(tmp_path / "advisor.pkl")]) == 0
    advisor = Advisor.load(tmp_path / "advisor.pkl")
    low, high = advisor.band
    assert 0.0 <= low <= 0.5 <= high <= 1.0 and "held-out programs" in advisor.basis
    for gcode in (GOOD, OFF_BED):
        advice = advisor(gcode, "ender3-klipper")
        assert 0.0 <= advice.p_success <= 1.0 and advice.call in CALLS
        assert (advice.abstain_low, advice.abstain_high) == (low, high)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pkl: not readable"):
        Advisor.load(tmp_path / "junk.pkl")


def test_the_writers_surprise_is_its_own_loss_and_fits_a_probability(tiny_model_config: object) -> None:
    import torch

    from agent.llm import load_pretrained
    from training.model import ensure_embedded
    from training.predict_writer import WriterLikelihood

    path = str(ensure_embedded(tiny_model_config)[0])  # type: ignore[arg-type]
    writer = WriterLikelihood(path, max_tokens=256)
    mean_nll, worst_line, share_high = writer.surprise(GOOD)
    # The mean token NLL is the causal-LM loss the model itself reports on the same tokens.
    model, tokenizer = load_pretrained(path, "cpu")
    ids = tokenizer(GOOD, add_special_tokens=False, truncation=True, max_length=256)["input_ids"]
    with torch.no_grad():
        loss = float(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    assert mean_nll == pytest.approx(loss, rel=1e-4)
    assert worst_line >= mean_nll and 0.0 <= share_high <= 1.0
    items = [Labelled("good", GOOD, "ender3-klipper", True), Labelled("bad", OFF_BED, "ender3-klipper", False)]
    p = predictor("writer", items, writer=path)
    assert all(0.0 <= p(i).p_success <= 1.0 for i in items)
    with pytest.raises(ValueError, match="--writer"):
        predictor("writer", items)


def test_first_layer_telemetry_by_hand_and_its_classifier(dataset: Path) -> None:
    from training.first_layer import FIRST_LAYER_FEATURES, first_layer_telemetry

    ender = load_printer("ender3-klipper")
    good = dict(zip(FIRST_LAYER_FEATURES, first_layer_telemetry(GOOD, ender), strict=True))
    # The square: four 20 mm sides extruded to E2.66, on its only layer, without a failure.
    assert good["fl_extruded_path_mm"] == pytest.approx(80.0) and good["fl_filament_mm"] == pytest.approx(2.66)
    assert good["fl_has_layer"] == 1 and good["fl_fatal"] == 0 and good["fl_defects"] == 0
    off = dict(zip(FIRST_LAYER_FEATURES, first_layer_telemetry(OFF_BED, ender), strict=True))
    assert off["fl_fatal"] == 1 and off["fl_has_layer"] == 0  # stopped at line 6, before laying a layer
    train, test = simulated_programs(dataset, "train"), simulated_programs(dataset, "test")
    model = predictor("first-layer", train)
    assert model.features(test[:2]).shape == (2, len(FEATURES) + len(FIRST_LAYER_FEATURES))
    result = score("first-layer", model, test, "simulated")
    assert all(0.0 <= p <= 1.0 for p in result.p_success) and result.success.n == len(test)


def test_the_llm_critic_is_asked_and_answers_in_its_format(tiny_model_config: object, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from training import predict_critic
    from training.model import ensure_embedded
    from training.predict_critic import PROGRAM_TOKENS, critic_answer, critic_prompt

    assert critic_answer(True, set()) == "yes"
    assert critic_answer(False, {"nozzle_collision", "cold_extrusion"}) == "no: cold_extrusion, nozzle_collision"
    path = str(ensure_embedded(tiny_model_config)[0])  # type: ignore[arg-type]
    from agent.llm import load_tokenizer

    tok = load_tokenizer(path)
    long = GOOD * 200
    prompt = critic_prompt(tok, long, "ender3-klipper")
    assert prompt.startswith("Will this G-code print without a failure on the ender3-klipper printer?")
    assert len(tok(prompt.split("\n", 1)[1], add_special_tokens=False)["input_ids"]) <= PROGRAM_TOKENS + 2
    items = [Labelled("good", GOOD, "ender3-klipper", True), Labelled("bad", OFF_BED, "ender3-klipper", False,
                                                                      {"move_out_of_range"}, 6)]
    monkeypatch.setattr(predict_critic, "SFT_STEPS", 3)  # the mechanics, not a trained critic
    critic = predictor("critic", items, critic=path, work_dir=tmp_path / "critic")
    assert (tmp_path / "critic" / "final" / "config.json").is_file()
    assert all(0.0 <= critic(item).p_success <= 1.0 for item in items)
    with pytest.raises(ValueError, match="--critic"):
        predictor("critic", items)
