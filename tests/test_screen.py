"""GRPO's prompt screening (training.screen): answers scored in the real simulator, hard prompts first, the
record reused on resume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from envs.rewards import StepScores
from sim_bridge.config import ConfigError
from training.data import load_table, to_grpo
from training.grpo import GRPOSettings
from training.make_dataset import DatasetConfig, make_dataset
from training.screen import SCREEN_FILE, is_hard, screen_rows


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> object:
    out = tmp_path_factory.mktemp("screen") / "data"
    make_dataset(DatasetConfig(name="screen", seed=3, jobs=16, difficulties=[0], part_kinds=["rectangle", "polygon"],
                               jobs_per_shard=4, defects_per_job=0, traces=False, images=False, workers=1), out,
                 progress=False)
    return load_table(out, "sft", split="train")


def _reference_for_even_rows(sft_rows: object) -> tuple[object, dict[str, str], list[int]]:
    """GRPO's rows, and a policy's answers: the expert's reference program for the even rows, nothing for the
    odd ones (which must come out hard)."""
    layers = sft_rows.filter(lambda r: r["step_kind"] == "layer")
    answers = {p: (c if i % 2 == 0 else "") for i, (p, c) in enumerate(zip(layers["prompt"], layers["completion"],
                                                                            strict=True))}
    return to_grpo(layers), answers, [i for i in range(len(layers)) if i % 2]


def test_hard_prompts_come_first_and_the_rest_fill_the_steps(table: object, tmp_path: Path) -> None:
    rows, answers, odd = _reference_for_even_rows(table)
    asked: list[str] = []

    def policy(prompts: Sequence[str]) -> list[str]:
        asked.extend(prompts)
        return [answers[p] for p in prompts]

    assert len(rows) >= 6
    found = screen_rows(policy, rows, prompts_needed=len(odd) + 2, geometry_below=0.95, seed=1, folder=tmp_path)
    assert sorted(asked) == sorted(rows["prompt"]), "every candidate answered once"
    assert found.candidates == len(rows) and found.hard == len(odd), "empty answers hard, reference answers not"
    assert found.kept[:len(odd)] == odd and len(found.kept) == len(odd) + 2
    assert all(i % 2 == 0 for i in found.kept[len(odd):]) and len(set(found.kept)) == len(found.kept)
    record = json.loads((tmp_path / SCREEN_FILE).read_text())
    assert record["kept"] == found.kept and record["fatal"] == found.fatal

    # A resumed run reads the record: nothing is answered again.
    def refuse(prompts: Sequence[str]) -> list[str]:
        raise AssertionError("answered again")

    again = screen_rows(refuse, rows, prompts_needed=len(odd) + 2, geometry_below=0.95, seed=1, folder=tmp_path)
    assert again == found
    # Another bar is another screening, not the old record.
    stricter = screen_rows(policy, rows, prompts_needed=len(odd) + 2, geometry_below=0.999, seed=1, folder=tmp_path)
    assert stricter.geometry_below == 0.999 and len(asked) == 2 * len(rows)

    # More hard prompts than the steps need: all of them are kept, no others.
    few = screen_rows(policy, rows, prompts_needed=1, geometry_below=0.95, seed=1, folder=tmp_path / "few")
    assert few.kept == odd


def test_what_counts_as_hard() -> None:
    assert not is_hard(StepScores(geometry=0.96, extrusion=1.0, time=1.0), 0.95)
    assert is_hard(StepScores(geometry=0.94, extrusion=1.0, time=1.0), 0.95)
    assert is_hard(StepScores(geometry=1.0, extrusion=1.0, time=1.0, defects=1), 0.95)
    assert is_hard(StepScores(geometry=1.0, extrusion=1.0, time=1.0, fatal=True), 0.95)


def test_screen_geometry_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"screen_geometry = 1.5"):
        GRPOSettings(screen_geometry=1.5)
