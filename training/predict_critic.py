"""An LLM critic of print success (``python -m training.predict --critic MODEL``): a language model fine-tuned
through the same SFT adapter as the writer (:func:`training.backend.make_sft_trainer`) to answer, for a
program, ``yes`` (it prints) or ``no: MODE, MODE`` (the failure modes the simulator reported).

The critic reads the program's first :data:`PROGRAM_TOKENS` tokens (the embedded model's context is 2,048;
a median program of the prediction dataset is about 2,200 tokens, so it reads the start sequence and the
first layers, not always the line that fails). Its probability of success is the model's next-token
probability of ``yes`` against ``no`` after the question; its modes are those of its greedy answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from agent.llm import format_prompt, generate, load_pretrained
from training.backend import make_sft_trainer
from training.checkpoints import train_and_save
from training.evaluate import model_folder

PROGRAM_TOKENS = 1600
"""Tokens of the program the critic reads (room left for the question and the answer)."""
QUESTION = "Will this G-code print without a failure on the {printer} printer? Answer yes, or no and the failure modes.\n"
SFT_STEPS = 300


def critic_prompt(tokenizer: Any, gcode: str, printer: str) -> str:
    """The question and the program's first :data:`PROGRAM_TOKENS` tokens."""
    ids = tokenizer(gcode, add_special_tokens=False)["input_ids"][:PROGRAM_TOKENS]
    return QUESTION.format(printer=Path(printer).stem) + tokenizer.decode(ids)


def critic_answer(success: bool, modes: set[str]) -> str:
    return "yes" if success else "no: " + ", ".join(sorted(modes) or ["unknown"])


class LLMCritic:
    """A model fine-tuned to judge programs; :meth:`fit` trains it on labelled programs."""

    def __init__(self, model: str, out_dir: Path, steps: int | None = None, seed: int = 0) -> None:
        self.start = model_folder(model)
        self.out_dir, self.steps, self.seed = Path(out_dir), steps or SFT_STEPS, seed
        self._model: Any = None
        self._tokenizer: Any = None

    def fit(self, items: Sequence[Any]) -> LLMCritic:
        model, tokenizer = load_pretrained(self.start, "cpu")
        rows = datasets.Dataset.from_list([{"prompt": critic_prompt(tokenizer, i.gcode, i.printer),
                                            "completion": critic_answer(i.success, i.modes)} for i in items])
        trainer = make_sft_trainer(model, tokenizer, rows, output_dir=str(self.out_dir), learning_rate=1e-3,
                                   batch_size=4, warmup_steps=20, max_steps=self.steps, seed=self.seed,
                                   logging_steps=25)
        self._model, self._tokenizer = train_and_save(trainer, tokenizer, self.out_dir).eval(), tokenizer
        return self

    def _first_token_ids(self) -> tuple[int, int]:
        yes = self._tokenizer("yes", add_special_tokens=False)["input_ids"][0]
        no = self._tokenizer("no", add_special_tokens=False)["input_ids"][0]
        return yes, no

    def judge(self, gcode: str, printer: str) -> tuple[float, set[str]]:
        """The probability of success and the failure modes of the critic's own answer."""
        if self._model is None:
            raise RuntimeError("LLMCritic.fit first")
        prompt = critic_prompt(self._tokenizer, gcode, printer)
        ids = self._tokenizer(format_prompt(self._tokenizer, prompt), return_tensors="pt",
                              add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = self._model(ids).logits[0, -1].float()
        yes, no = self._first_token_ids()
        p = float(torch.softmax(logits[[yes, no]], dim=0)[0])
        answer = generate(self._model, self._tokenizer, [prompt], 24)[0].strip()
        modes = set()
        if answer.startswith("no:"):
            modes = {m.strip() for m in answer[3:].split(",") if m.strip() and m.strip() != "unknown"}
        return p, modes
