"""What the validator reports: one :class:`Violation` per finding, one :class:`Verdict` per program, and the
:class:`FindingList` that collects them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_COMMAND_CHARS = 200
"""A finding quotes at most this much of its line."""


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
    warnings: tuple[Violation, ...] = ()
    """Findings that do not block (rule ``reinterpreted``): what the printer's firmware accepts but reads
    otherwise than written (Prunt's ``M205 S`` is snap, not a minimum feed rate)."""

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
        """``{"verdict", "violations", "sha256", "lines"}`` (and ``"warnings"`` when there are any), JSON-ready."""
        data = {"verdict": self.verdict, "violations": [v.as_dict() for v in self.violations],
                "sha256": self.sha256, "lines": self.lines}
        if self.warnings:
            data["warnings"] = [v.as_dict() for v in self.warnings]
        return data


class FindingList:
    """Collects findings, listing at most ``per_rule`` of each rule and counting the rest."""

    def __init__(self, per_rule: int) -> None:
        self.per_rule = per_rule
        self.items: list[Violation] = []
        self.counts: dict[str, int] = {}
        self.first_dropped: dict[str, tuple[int, str]] = {}

    def add(self, line: int, raw: str, rule: str, limit: str, value: str, message: str) -> None:
        count = self.counts.get(rule, 0) + 1
        self.counts[rule] = count
        if count <= self.per_rule:
            self.items.append(Violation(line, quote(raw), rule, limit, value, message))
        elif rule not in self.first_dropped:
            self.first_dropped[rule] = (line, quote(raw))

    def result(self) -> tuple[Violation, ...]:
        items = list(self.items)
        for rule, (line, raw) in self.first_dropped.items():
            more = self.counts[rule] - self.per_rule
            items.append(Violation(line, raw, rule, f"{self.per_rule} findings listed per rule", f"{more} more",
                                   f"{more} more findings of rule {rule} from this line on (not listed)"))
        items.sort(key=lambda v: v.line)
        return tuple(items)


def quote(raw: str) -> str:
    """The line as a finding quotes it: stripped, cut to :data:`MAX_COMMAND_CHARS`."""
    text = raw.strip()
    return text if len(text) <= MAX_COMMAND_CHARS else text[:MAX_COMMAND_CHARS] + "…"
