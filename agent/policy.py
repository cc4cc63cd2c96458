"""What every policy is: a batch of prompts in, one answer per prompt out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

Turn = dict[str, str]
"""One chat turn: ``{"role": "user" | "assistant", "content": text}``."""
Prompt = str | Sequence[Turn]
"""A task text, or (for revisions) a conversation: chat turns ending with the user's."""


class Policy(Protocol):
    """A batch of prompts in, one G-code (or tuning) text per prompt out, in order.

    Plain functions follow it (``lambda prompts: ["" for _ in prompts]``); so do
    :class:`agent.llm.LLMPolicy` and the policies of :mod:`agent.expert` and :mod:`agent.baselines`.
    """

    def __call__(self, prompts: Sequence[Prompt], /) -> list[str]: ...
