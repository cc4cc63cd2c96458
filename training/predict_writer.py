"""The writer model's own likelihood as a print-success predictor (``python -m training.predict --writer RUN``).

A language model that learnt to write programs gives a program a per-token negative log-likelihood: how
surprised it is by the text. A program with an injected defect (a wrong temperature, a move off the bed, an
extrusion factor ten times too high) may surprise it more than a clean one. This predictor reads the
program's plain text through the model (no chat template; the first ``max_tokens`` tokens, where the start
sequence and first layers lie) and maps the mean and the worst per-line surprise to a probability of
success with a logistic regression fitted on the training split. Its row in the table says whether the
writer's likelihood carries the signal; no failure modes and no line are predicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agent.llm import load_pretrained
from training.evaluate import model_folder

MAX_TOKENS = 1024
"""Tokens of each program the model reads (the embedded default's context is 2,048)."""


class WriterLikelihood:
    """Success from the writer model's surprise at a program: logistic regression on (mean token NLL, the
    worst line's mean NLL, the share of tokens with NLL above 5 nats), fitted on labelled programs."""

    def __init__(self, model: str, max_tokens: int = MAX_TOKENS) -> None:
        self.model_path = model_folder(model)
        self.max_tokens = max_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self.fit_model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None, "_tokenizer": None}

    def _load(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = load_pretrained(self.model_path, "cpu")
            self._model.eval()

    def surprise(self, gcode: str) -> np.ndarray:
        """``[mean token NLL, worst line's mean NLL, share of tokens above 5 nats]`` of ``gcode``'s start."""
        self._load()
        limit = min(self.max_tokens, int(getattr(self._model.config, "max_position_embeddings", self.max_tokens)))
        encoded = self._tokenizer(gcode, return_offsets_mapping=True, add_special_tokens=False,
                                  truncation=True, max_length=limit)
        ids = encoded["input_ids"]
        if len(ids) < 2:
            return np.array([0.0, 0.0, 0.0])
        with torch.no_grad():
            logits = self._model(torch.tensor([ids])).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none").numpy()
        # Token k+1's surprise belongs to the line its first character is on.
        starts = [start for start, _ in encoded["offset_mapping"][1:]]
        line_of = np.cumsum([0] + [gcode.count("\n", a, b) for a, b in zip(starts, starts[1:], strict=False)])
        worst = max(float(nll[line_of == line].mean()) for line in np.unique(line_of))
        return np.array([float(nll.mean()), worst, float((nll > 5.0).mean())])

    def fit(self, items: Sequence[Any]) -> WriterLikelihood:
        from sklearn.linear_model import LogisticRegression

        if len({i.success for i in items}) < 2:
            raise ValueError(f"{len(items)} training programs of one outcome: the likelihood needs both to fit")
        x = np.stack([self.surprise(i.gcode) for i in items])
        self.fit_model = LogisticRegression(max_iter=1000).fit(x, [i.success for i in items])
        return self

    def probability(self, gcode: str) -> float:
        """The fitted probability that ``gcode`` prints."""
        if self.fit_model is None:
            raise RuntimeError("WriterLikelihood.fit first")
        x = self.surprise(gcode).reshape(1, -1)
        p = float(self.fit_model.predict_proba(x)[0][list(self.fit_model.classes_).index(True)])
        return p if math.isfinite(p) else 0.5
