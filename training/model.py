"""The policy's language model: the embedded default (built locally, no hub) or any Hugging Face causal LM.

The embedded default is a byte-level BPE tokenizer trained on a simulated corpus — the prompts and expert
G-code of sampled jobs, played through ``GcodeWriter-v1`` — with numbers split into groups of up to three
digits, each group one token (:data:`NUMBER_SPLIT`), and a small
Qwen2-architecture causal LM initialised from a seed. It is built once, saved under
``cache_dir/<key>/`` (the key is a SHA-256 of everything that shapes it) and loaded from there afterwards.
Any other ``name`` is a Hugging Face model id or local path, loaded with ``from_pretrained`` (its own chat
template is kept). Prompting and decoding — what a policy needs at inference — are :mod:`agent.llm`'s.

``python -m training.model`` builds (or loads) the default and prints its size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from agent.llm import IM_END, IM_START, MARKER_FILE, load_pretrained, mark_plain_tokenizer, stop_token_ids
from envs.gcode_writer import GcodeWriterEnv
from envs.prompts import program_prompt
from envs.sampler import sample_job
from envs.slicer import slice_job
from sim_bridge.config import ConfigError, check_ranges, ranged

EMBEDDED = "embedded"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)
CORPUS_VERSION = 2
"""Bump when the corpus generator changes what it yields (it is part of the cache key). 2: GcodeWriter-v1's
layer prompts list the toolpath."""
BUILDER_VERSION = 2
"""Bump when the tokenizer spec, chat template or model construction changes (part of the cache key).
2: numbers in groups of up to three digits (was: one token per digit)."""
NUMBER_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
"""The pre-tokenizer's split (Llama 3's regex): runs of digits in groups of up to three from the left, so
``X140.944`` is ``X`` ``140`` ``.`` ``944``. Copying a coordinate from the prompt is then two or three
token look-ups instead of six or seven; with one token per digit the default model copied rectangles
(whose coordinates repeat) but not pentagons (docs/results.md)."""
DIGIT_GROUPS = " ".join([*(f"{i:03d}" for i in range(1000)), *(f"{i:02d}" for i in range(100)), *map(str, range(10))])
"""Added to the tokenizer's corpus (a few times over) so that, given the vocabulary for it (about 1,150
merges: ``vocab_size`` ≥ 2,048 with the default corpus), every group of up to three digits is one token,
whether or not the corpus wrote it."""
CORPUS_DIFFICULTIES = 5
"""Corpus jobs cycle through difficulties 0..4 so every kind of step (start, layer, end) is seen."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen-style ChatML without a default system message; the assistant turn (with its ``<|im_end|>``) is
wrapped in ``{% generation %}`` so TRL's assistant-only loss also trains the stop token."""


@dataclass(frozen=True)
class ModelConfig:
    """Which language model the policy uses, and the shape of the embedded default."""

    name: str = EMBEDDED
    """``"embedded"`` (built locally) or a Hugging Face causal LM id or local path
    (e.g. ``Qwen/Qwen2.5-0.5B-Instruct``). All fields below except ``max_length_tokens`` and ``cache_dir``
    shape only the embedded model."""
    vocab_size: int = ranged(2048, 300, 65536)
    """Embedded tokenizer vocabulary (256 byte tokens + 3 special tokens + learned merges); from about 2,048
    every group of up to three digits is one token (:data:`DIGIT_GROUPS`)."""
    hidden_size: int = ranged(128, 16, 4096)
    """Embedded model width (must divide by ``num_heads``)."""
    num_layers: int = ranged(2, 1, 64)
    """Embedded model decoder layers."""
    num_heads: int = ranged(4, 1, 64)
    """Embedded model attention heads."""
    num_kv_heads: int = ranged(2, 1, 64)
    """Embedded model key/value heads (grouped-query attention; must divide ``num_heads``)."""
    intermediate_size: int = ranged(384, 16, 16384)
    """Embedded model MLP width."""
    max_length_tokens: int = ranged(8192, 128, 131072)
    """Longest sequence (prompt + completion) in tokens: the embedded model's position range, and the
    training ``max_length`` (and Unsloth's ``max_seq_length``) for any model. G-code costs about 1.5
    characters per embedded token (digits in groups of three): a typical layer step is 2,000–3,500 tokens
    with its prompt, a large one up to 10,000."""
    seed: int = ranged(0, 0, 2**31 - 1)
    """Seeds the embedded corpus (which jobs are sampled) and the initial weights."""
    corpus_jobs: int = ranged(60, 1, 100000)
    """How many sampled jobs' prompts and expert programs train the embedded tokenizer."""
    cache_dir: str = ".cache/layerloop/models"
    """Folder holding built embedded models, one sub-folder per cache key."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.name.strip():
            raise ConfigError("name = '': give 'embedded' or a Hugging Face model id or local path")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size = {self.hidden_size}: must be a multiple of num_heads "
                              f"({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_kv_heads = {self.num_kv_heads}: must divide num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"hidden_size / num_heads = {self.hidden_size // self.num_heads}: rotary "
                              "embeddings need an even head size")


# -- corpus and tokenizer -----------------------------------------------------------------------------------
def corpus_texts(jobs: int, seed: int) -> Iterator[str]:
    """The embedded tokenizer's training texts: for each of ``jobs`` sampled jobs, the whole-program prompt
    and the heat-and-home setup, then every ``GcodeWriter-v1`` step's prompt and expert G-code (the
    whole-program answer is these steps' G-code joined, so it adds nothing). Deterministic."""
    for i in range(jobs):
        job = sample_job(np.random.default_rng([seed, i]), i % CORPUS_DIFFICULTIES)
        yield program_prompt(job)
        yield slice_job(job).setup
        env = GcodeWriterEnv(job=job)
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action = env.expert_action()
            yield obs["prompt"]
            yield action
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated


def build_tokenizer(texts: Iterator[str] | Sequence[str], vocab_size: int,
                    max_length_tokens: int = 2048) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (plus :data:`DIGIT_GROUPS`), split by
    :data:`NUMBER_SPLIT`: any text round-trips exactly, ``<|endoftext|>`` is eos and pad, and the chat
    template is Qwen-style ChatML."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(NUMBER_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(itertools.chain(texts, [DIGIT_GROUPS] * 4), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        extra_special_tokens=[IM_START, IM_END], clean_up_tokenization_spaces=False,
        model_max_length=max_length_tokens, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


# -- model ----------------------------------------------------------------------------------------------------
def build_model(config: ModelConfig, tokenizer: transformers.PreTrainedTokenizerBase
                ) -> transformers.Qwen2ForCausalLM:
    """A freshly initialised Qwen2 causal LM sized by ``config``; the same seed gives the same weights."""
    stops = stop_token_ids(tokenizer)
    qwen = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_length_tokens,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=stops[0],
        pad_token_id=tokenizer.pad_token_id)
    # Weights come from the global torch RNG; fork it so building a model leaves the caller's stream alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = transformers.Qwen2ForCausalLM(qwen)
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# -- cache ----------------------------------------------------------------------------------------------------
def cache_key(config: ModelConfig) -> str:
    """SHA-256 over the fields that shape the embedded model plus the corpus and builder versions."""
    shape = {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                                             "num_kv_heads", "intermediate_size", "max_length_tokens", "seed",
                                             "corpus_jobs")}
    shape |= {"corpus_version": CORPUS_VERSION, "builder_version": BUILDER_VERSION}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def cache_path(config: ModelConfig) -> Path:
    """Where the embedded model for ``config`` lives (whether or not it has been built yet)."""
    return Path(config.cache_dir) / cache_key(config)[:16]


def ensure_embedded(config: ModelConfig) -> tuple[Path, bool]:
    """Build the embedded model into its cache folder unless a complete one is there.

    Returns the folder and whether it was built now. The build writes into a temporary folder beside the
    target and renames it into place, so a crash or a concurrent build never leaves a half-written entry.
    """
    target = cache_path(config)
    if (target / MARKER_FILE).is_file():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        texts = list(corpus_texts(config.corpus_jobs, config.seed))
        tokenizer = build_tokenizer(texts, config.vocab_size, config.max_length_tokens)
        model = build_model(config, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"key": cache_key(config), "config": {k: v for k, v in vars(config).items() if k != "cache_dir"},
                  "corpus_version": CORPUS_VERSION, "builder_version": BUILDER_VERSION,
                  "corpus_texts": len(texts), "corpus_chars": sum(map(len, texts)),
                  "parameters": parameter_count(model)}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if (target / MARKER_FILE).is_file():
            return target, False  # another process finished the same build meanwhile; its entry is identical
        if target.exists():  # an incomplete entry (no marker) from an older crash
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER_FILE).is_file():
                raise
            # Another process finished the same build first; its entry is identical.
            return target, False
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target, True


# -- loading --------------------------------------------------------------------------------------------------
def load_model_and_tokenizer(config: ModelConfig, device: str = "cpu"
                             ) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """The policy model and its tokenizer, on ``device``; prints one line saying what was done."""
    if config.name == EMBEDDED:
        path, built = ensure_embedded(config)
        source, verb = str(path), "built" if built else "loaded"
    else:
        source, verb = config.name, "loaded"
    model, tokenizer = load_pretrained(source, device)
    what = f"embedded model ({path})" if config.name == EMBEDDED else f"model {config.name}"
    print(f"model: {verb} {what}, {parameter_count(model):,} parameters, vocabulary {len(tokenizer):,}")
    return model, tokenizer


def save_model(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
               path: str | Path) -> Path:
    """Save a (fine-tuned) model with its tokenizer; a model of the embedded family keeps its marker, so
    it reloads with the tokenizer it was trained with."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    mark_plain_tokenizer(tokenizer, path)
    return path


def main() -> None:
    """Build or load the default embedded model and print its size and a sample tokenisation."""
    model, tokenizer = load_model_and_tokenizer(ModelConfig())
    sample = "G1 X100.225 Y119.775 E0.73152 F1200\n"
    print(f"{parameter_count(model):,} parameters; {sample.strip()!r} is {len(tokenizer(sample)['input_ids'])} tokens")


if __name__ == "__main__":
    main()
