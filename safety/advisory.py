"""An advisory prediction shown beside a program in the approval console: a predictor's probability that the
program prints, and whether that probability is confident or falls in its *abstain band* ("ask a person").

It never decides anything: the gate's checks (validator, simulation, a person's approval, the printer's
state) are unchanged by it, and a program "likely to print" still needs a reviewer. It tells the reviewer
where a trained predictor (``python -m training.predict --save-classifier FILE``, docs/evaluation.md) is
unsure, which is where a careful look pays most. The band is the one the predictor's own evaluation chose:
the narrowest around 0.5 whose programs outside it were predicted with the target accuracy on held-out
programs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

LIKELY_TO_PRINT = "likely to print"
LIKELY_TO_FAIL = "likely to fail"
ASK_A_PERSON = "ask a person"
CALLS = (LIKELY_TO_PRINT, LIKELY_TO_FAIL, ASK_A_PERSON)
MAX_TEXT_CHARS = 300


class AdvisoryError(ValueError):
    """An advisory with a value out of its range."""


@dataclass(frozen=True)
class Advisory:
    """One predictor's advice on one program."""

    predictor: str
    """What predicted, e.g. ``classifier (gradient-boosted trees on static features)``; 1 to 300 characters."""
    p_success: float
    """The predicted probability that the program prints without failure, in [0, 1]."""
    abstain_low: float
    """Probabilities in ``[abstain_low, abstain_high)`` are not confident: the call is "ask a person"."""
    abstain_high: float
    """Upper end of the abstain band; ``0 <= abstain_low <= abstain_high <= 1``."""
    basis: str = ""
    """Where the predictor and its band come from (dataset, held-out accuracy), at most 300 characters."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.predictor.strip()) <= MAX_TEXT_CHARS:
            raise AdvisoryError(f"advisory predictor {self.predictor!r}: 1 to {MAX_TEXT_CHARS} characters")
        if len(self.basis) > MAX_TEXT_CHARS:
            raise AdvisoryError(f"advisory basis: at most {MAX_TEXT_CHARS} characters, got {len(self.basis)}")
        for name in ("p_success", "abstain_low", "abstain_high"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or math.isnan(value) or not 0.0 <= value <= 1.0:
                raise AdvisoryError(f"advisory {name} {value!r}: must lie in [0, 1]")
        if self.abstain_low > self.abstain_high:
            raise AdvisoryError(f"advisory abstain band [{self.abstain_low}, {self.abstain_high}): "
                                "the low end must not exceed the high end")

    @property
    def call(self) -> str:
        """:data:`ASK_A_PERSON` inside the band, else :data:`LIKELY_TO_PRINT` or :data:`LIKELY_TO_FAIL`."""
        if self.abstain_low <= self.p_success < self.abstain_high:
            return ASK_A_PERSON
        return LIKELY_TO_PRINT if self.p_success >= self.abstain_high else LIKELY_TO_FAIL

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "call": self.call}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Advisory:
        return cls(str(data["predictor"]), float(data["p_success"]), float(data["abstain_low"]),
                   float(data["abstain_high"]), str(data.get("basis", "")))
