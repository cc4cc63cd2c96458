"""A trained supervisor model on a live deployment (``--supervisor MODEL``): it reads the prompt the
``PrintSupervisor-v1`` environment renders, with the printer's telemetry; its answer is only a proposal
(the gate's verdicts come back to it as the environment's ``Refused:`` lines).

The model is the tiny embedded one, taught one answer by a few gradient steps here (a real checkpoint of
``training.sim_loop``'s supervisor task loads the same way).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from agent.live_supervisor import ModelLiveSupervisor, RuleLiveSupervisor, load_live_supervisor
from agent.llm import format_prompt
from envs.supervisor import PrintSupervisorEnv
from safety.deploy.supervision import LayerPlan, LiveTelemetry
from safety.tuning import TuningState, validate_tuning
from sim_bridge.printers import load_material, load_printer

PROGRAM = b"M104 S200\nM109 S200\nG28\nG1 Z0.2 F600\nG1 X50 Y50 E2 F1200\n"
ANSWER = "M220 S80\nM104 S300"
"""One command inside the live-tuning windows, one far outside (the job prints at 200 C)."""


def telemetry(**changes: Any) -> LiveTelemetry:
    values: dict[str, Any] = dict(
        elapsed_s=60.0, klippy_state="ready", print_state="printing", hotend_temp_c=196.0, hotend_target_c=200.0,
        bed_temp_c=60.0, bed_target_c=60.0, layer=3, line=120, layer_count=10, progress=0.3, eta_s=300.0,
        speed_factor=1.0, extrude_factor=1.0, fan=1.0)
    return LiveTelemetry(**(values | changes))


PLAN = LayerPlan(index=3, first_line=120, z_mm=0.8, time_s=30.0, filament_mm=40.0, flow_mm3_s=12.0,
                 delivered_fraction=0.8)


def teach(sup: ModelLiveSupervisor, prompt: str, answer: str, steps: int = 80) -> None:
    tok = sup.tokenizer
    context = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([context + target])
    labels = torch.tensor([[-100] * len(context) + target])
    sup.model.train()
    optimiser = torch.optim.Adam(sup.model.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = sup.model(input_ids=ids, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    sup.model.eval()


@pytest.fixture(scope="module")
def embedded_path(tiny_model_config: Any) -> Path:
    from training.model import ensure_embedded

    return ensure_embedded(tiny_model_config)[0]


def test_the_live_prompt_is_the_environments_prompt() -> None:
    env = PrintSupervisorEnv()
    obs, _ = env.reset(seed=3)
    obs, *_ = env.step("")
    sim_lines = obs["prompt"].splitlines()
    rule = RuleLiveSupervisor(load_printer("ender3-klipper"), load_material("PLA"), 200.0)
    assert rule.telemetry(telemetry(), PLAN)["delivered_fraction"] < 1.0  # melt-limited at 196 C
    sup = ModelLiveSupervisor.__new__(ModelLiveSupervisor)
    RuleLiveSupervisor.__init__(sup, rule.profile, rule.material, 200.0)
    sup.title, sup.last_refused = "job 0123456789ab (deployed program, PLA on ender3-klipper)", []
    live_lines = sup.prompt(telemetry(), PLAN).splitlines()
    # The same sentences in the same order, only the job's title and the numbers differ.
    def shape(lines: list[str]) -> list[str]:
        return [re.sub(r"[-+]?\d+(\.\d+)?", "#", re.sub(r"job \S+ \(.*?\)", "job T", line)) for line in lines]

    assert shape(sim_lines) == shape(live_lines)
    assert "3 of 10 layers printed" in live_lines[0]
    assert "Hotend 196.0 C (target 200, job 200)" in live_lines[1]
    assert "Refused" not in "\n".join(live_lines)


def test_a_trained_model_proposes_and_reads_the_gates_refusals(embedded_path: Path, tmp_path: Path) -> None:
    sup = load_live_supervisor(str(embedded_path), "ender3-klipper", "PLA", PROGRAM)
    assert isinstance(sup, ModelLiveSupervisor) and sup.job_hotend_c == 200.0
    prompt = sup.prompt(telemetry(), PLAN)
    teach(sup, prompt, ANSWER)
    checkpoint = tmp_path / "supervisor-final"
    sup.model.save_pretrained(checkpoint)
    sup.tokenizer.save_pretrained(checkpoint)
    (checkpoint / "layerloop-model.json").write_text((embedded_path / "layerloop-model.json").read_text())

    trained = load_live_supervisor(str(checkpoint), "ender3-klipper", "PLA", PROGRAM)
    answer = trained.propose(telemetry(), PLAN)
    assert answer.strip() == ANSWER
    # What the deployment does with it: one line at a time through the live-tuning windows.
    profile, state = load_printer("ender3-klipper"), TuningState(hotend_temp_c=200.0)
    verdicts = {line: validate_tuning(line, state, profile) for line in answer.splitlines()}
    assert verdicts["M220 S80"].allowed and not verdicts["M104 S300"].allowed
    trained.refused("M104 S300", [v.message for v in verdicts["M104 S300"].violations])
    again = trained.prompt(telemetry(layer=4), PLAN)
    assert "Refused: M104 S300: " in again
    trained.propose(telemetry(layer=4), PLAN)
    assert "Refused" not in trained.prompt(telemetry(layer=5), PLAN)  # only the last answer's refusals


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        load_live_supervisor(str(tmp_path), "ender3-klipper", "PLA", PROGRAM)
