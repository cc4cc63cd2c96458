"""The language-model policy: prompt formatting, generation and sampling, stop tokens, the revise loop.

Any Hugging Face causal LM with its tokenizer plays it (the embedded default is built by
:mod:`training.model`; nothing here needs ``training``). A prompt is a task text (one user turn) or, for a
revision, the whole conversation so far (:func:`conversation`); with a chat template it is rendered by the
template, without one it is the text and a newline.

**The revise loop** (:func:`revise_answers`, used by evaluation and by ``training.write``): an answer is
first tried on a copy of its episode; when it needs revising (:func:`needs_revision`), the simulator's
feedback goes back to the policy in the conversation (:func:`revision_request`) and the policy answers
again. Multi-turn GRPO (``training.grpo``) splices the same turns into its rollouts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agent.policy import Policy, Prompt, Turn
from envs.gcode_writer import GcodeWriterEnv
from sim_bridge.config import ConfigError

if TYPE_CHECKING:
    import transformers

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
"""ChatML turn markers; ``<|im_end|>`` ends an answer wherever the vocabulary has it."""
REVISION_REQUEST = ("Simulator feedback on your G-code for this layer: {feedback}.\n"
                    "Write the layer again, corrected. Answer with G-code only.")
"""The user turn that carries the simulator's feedback and asks for a revision."""
REVISE_MODES = ("failures", "always")
"""When an answer is sent back: only when the simulator reported a failure for it, or always."""
GENERATION_BATCH = 8
"""Prompts generated together (left-padded) by :class:`LLMPolicy`."""
MARKER_FILE = "layerloop-model.json"
"""Written beside a model of the embedded family: its tokenizer is a plain ``PreTrainedTokenizerFast``."""


# -- loading ------------------------------------------------------------------------------------------------------
def load_tokenizer(source: str | Path) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of a Hugging Face id or local folder: for a folder with :data:`MARKER_FILE`, the plain
    fast tokenizer saved there. ``AutoTokenizer`` (transformers 5) builds ``Qwen2Tokenizer`` for every
    ``qwen2`` model and swaps in Qwen2's pre-tokenizer (one token per digit), which splits numbers
    differently from the embedded tokenizer's three-digit groups."""
    import transformers

    if (Path(source) / MARKER_FILE).is_file():
        return transformers.PreTrainedTokenizerFast.from_pretrained(source)
    return transformers.AutoTokenizer.from_pretrained(source)


def mark_plain_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Write :data:`MARKER_FILE` into ``folder`` when ``tokenizer`` is a plain fast tokenizer (the embedded
    family's), so :func:`load_tokenizer` reloads it as saved."""
    import transformers

    if type(tokenizer) is transformers.PreTrainedTokenizerFast:
        (Path(folder) / MARKER_FILE).write_text(json.dumps({"tokenizer": "PreTrainedTokenizerFast"}) + "\n")


def load_pretrained(source: str, device: str = "cpu"
                    ) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a Hugging Face id or a local folder (a trained checkpoint), on
    ``device``: float32 on a CPU, the checkpoint's dtype on a GPU; a pad token set."""
    import transformers

    if not Path(source).is_dir() and _names_a_folder(source):
        raise ConfigError(f"model {source}: no such folder (a trained model is a folder such as RUN/grpo/final)")
    try:
        tokenizer = load_tokenizer(source)
        dtype = "auto" if str(device).startswith("cuda") else torch.float32
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        # transformers' own message speaks of connecting to the Hub even offline: say what was looked for.
        raise ConfigError(f"model {source}: not a model folder here, nor a Hugging Face model this machine can "
                          f"load ({str(exc).splitlines()[0]})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def _names_a_folder(source: str) -> bool:
    """Whether ``source`` can only be a local path: absolute, relative to here, or more than ``org/name`` deep,
    or under a folder that exists here (``runs/...``); a Hub id is ``org/name`` or ``name``."""
    first = source.split("/", 1)[0]
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or ("/" in source and Path(first).is_dir())


# -- prompting ----------------------------------------------------------------------------------------------------
def format_prompt(tokenizer: transformers.PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text the model continues: the chat template with a generation prompt when the tokenizer has one,
    else the prompt and a newline. ``prompt`` is a task text (one user turn) or a whole conversation (a list
    of ``{"role", "content"}`` turns ending with the user's, e.g. a revision request); a conversation needs a
    chat template."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    if not isinstance(prompt, str):
        if not templated:
            raise ValueError("a multi-turn conversation needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    if templated:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def stop_token_ids(tokenizer: transformers.PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a completion: eos and, when the vocabulary has it, ``<|im_end|>``."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in ids:
        ids.append(im_end)
    return ids


# -- decoding -----------------------------------------------------------------------------------------------------
def generate(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
             prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             batch_size: int = GENERATION_BATCH, seed: int | None = None) -> list[str]:
    """Completions of ``prompts`` (raw task text or conversations; :func:`format_prompt` is applied here),
    batched with left padding, stopping at eos or ``<|im_end|>``. ``temperature`` 0 is greedy."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens = {max_new_tokens}: must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature = {temperature}: must be 0 (greedy) or positive")
    if seed is not None:
        torch.manual_seed(seed)
    texts = [format_prompt(tokenizer, p) for p in prompts]
    templated = bool(getattr(tokenizer, "chat_template", None))
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": stop_token_ids(tokenizer),
                                  "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        gen_kwargs |= {"do_sample": True, "temperature": temperature, "top_p": top_p}
    else:
        gen_kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=not templated).to(model.device)
            with torch.no_grad():
                ids = model.generate(**batch, **gen_kwargs)
            new = ids[:, batch["input_ids"].shape[1]:]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def sample(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
           contexts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float) -> list[list[int]]:
    """One sampled continuation of each token context, up to and including its stop token (what a GRPO
    rollout extends its turns with)."""
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad] * (width - len(c)) + list(c) for c in contexts], device=model.device)
    attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                 eos_token_id=stops, pad_token_id=pad)
    finally:
        model.train(was_training)
    result = []
    for row in out[:, width:].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        result.append(row[:cut])
    return result


class LLMPolicy:
    """A language model as a :class:`~agent.policy.Policy`: greedy (or sampled) completions of each prompt,
    the model switched to eval mode while it answers and back afterwards."""

    def __init__(self, model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                 max_new_tokens: int, temperature: float = 0.0, batch_size: int = GENERATION_BATCH) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.context_tokens = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        """The model's context (0: unknown, no limit applied)."""
        self.prompts_seen = 0
        self.over_context: list[int] = []
        """Token counts of the prompts longer than the context, answered with nothing."""

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        # A prompt the model cannot read whole gets no answer (a failed step) rather than a continuation of
        # positions it never trained on, which is slow on a long prompt and means nothing.
        self.prompts_seen += len(prompts)
        fits = list(range(len(prompts)))
        lengths: list[int] = []
        if self.context_tokens:
            lengths = [len(self.tokenizer(format_prompt(self.tokenizer, p), add_special_tokens=False)["input_ids"])
                       for p in prompts]
            fits = [i for i, n in enumerate(lengths) if n < self.context_tokens]
            self.over_context += [n for n in lengths if n >= self.context_tokens]
        answers = [""] * len(prompts)
        if fits:
            room = self.max_new_tokens
            if self.context_tokens:
                room = max(1, min(room, self.context_tokens - max(lengths[i] for i in fits)))
            texts = generate(self.model, self.tokenizer, [prompts[i] for i in fits], room,
                             temperature=self.temperature, batch_size=self.batch_size)
            for i, text in zip(fits, texts, strict=True):
                answers[i] = text
        return answers

    @property
    def notes(self) -> list[str]:
        """What a report should say about this policy's answers (prompts it could not read)."""
        if not self.over_context:
            return []
        return [f"{len(self.over_context)} of {self.prompts_seen} prompts were longer than the model's context of "
                f"{self.context_tokens:,} tokens (the longest {max(self.over_context):,}): answered with nothing, "
                "so those steps failed"]


# -- the revise loop ----------------------------------------------------------------------------------------------
def revision_request(feedback: str) -> str:
    """The user turn asking for a revision after ``feedback``."""
    return REVISION_REQUEST.format(feedback=feedback.rstrip(". "))


def conversation(prompt: str, answers: Sequence[str], feedbacks: Sequence[str]) -> list[Turn]:
    """The chat of a multi-turn episode: the task, then each answer followed by the feedback on it."""
    turns = [{"role": "user", "content": prompt}]
    for answer, feedback in zip(answers, feedbacks, strict=True):
        turns += [{"role": "assistant", "content": answer}, {"role": "user", "content": revision_request(feedback)}]
    return turns


def needs_revision(revise: str, fatal: bool, defects: int) -> bool:
    """Whether an answer is sent back for revision: always, or (``"failures"``) only when the simulator
    reported a failure for it — a refused or fatal move, or a defect."""
    if revise not in REVISE_MODES:
        raise ValueError(f"revise = {revise!r}: must be one of {', '.join(map(repr, REVISE_MODES))}")
    return revise == "always" or bool(fatal or defects)


def revise_answers(policy: Policy, envs: Sequence[GcodeWriterEnv], prompts: Sequence[str], texts: Sequence[str],
                   revisions: int, revise: str = "failures") -> list[str]:
    """The answers after up to ``revisions`` rounds of feedback: each answer is tried on a copy of its
    episode and, when it needs it (:func:`needs_revision`), sent back with the simulator's feedback in the
    conversation. The episodes themselves are not advanced."""
    answers = [[t] for t in texts]
    feedbacks: list[list[str]] = [[] for _ in texts]
    for _ in range(revisions):
        pending = []
        for i, env in enumerate(envs):
            trial = copy.deepcopy(env)
            _, _, _, _, info = trial.step(answers[i][-1])
            if needs_revision(revise, info["fatal"], info["defects"]):
                feedbacks[i].append(trial.feedback)
                pending.append(i)
        if not pending:
            break
        chats = [conversation(prompts[i], answers[i], feedbacks[i]) for i in pending]
        for i, text in zip(pending, policy(chats), strict=True):
            answers[i].append(text)
    return [a[-1] for a in answers]
