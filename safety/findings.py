"""What the validator reports: one :class:`Violation` per finding, one :class:`Verdict` per program."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Violation:
    """One finding: where, what was written, which rule, the limit and the value that broke it."""

    line: int
    """1-based line number in the validated text (0 when the finding is about the input as a whole)."""
    command: str
    """The line as written, stripped (cut to 200 characters)."""
    rule: str
    """Rule id, e.g. ``forbidden_command``, ``move_out_of_range`` (see :mod:`sim_bridge.failures`)."""
    limit: str
    """The limit in words with its unit, e.g. ``X in [0, 235] mm``."""
    value: str
    """The offending value with its unit, e.g. ``X=260 mm``."""
    message: str
    """One sentence for people: what is wrong and why it is blocked."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {"line": self.line, "command": self.command, "rule": self.rule, "limit": self.limit,
                "value": self.value, "message": self.message}

    def __str__(self) -> str:
        return f"{self.line}: {self.rule}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    """The validator's answer for one program (or one batch of tuning commands)."""

    violations: tuple[Violation, ...]
    """Every finding, in line order."""
    lines: int
    """Lines read."""
    sha256: str
    """SHA-256 (hex) of the exact bytes validated: an approval names this hash."""

    @property
    def verdict(self) -> str:
        """``allow`` when there are no findings, else ``block``."""
        return "block" if self.violations else "allow"

    @property
    def allowed(self) -> bool:
        """True when the program may run."""
        return not self.violations

    def rules(self) -> set[str]:
        """The rule ids found."""
        return {v.rule for v in self.violations}

    def as_dict(self) -> dict[str, Any]:
        """``{"verdict", "violations", "sha256", "lines"}``, JSON-ready."""
        return {"verdict": self.verdict, "violations": [v.as_dict() for v in self.violations],
                "sha256": self.sha256, "lines": self.lines}
