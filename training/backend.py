"""The one adapter between layerloop and its training libraries: TRL (any machine) and Unsloth (NVIDIA GPUs).

Everything that depends on TRL's or Unsloth's API — config field names, trainer signatures, how datasets
must look, which precision a machine can train in — lives here, so a version bump touches one file.
TRL is imported inside the functions, after Unsloth when Unsloth is used (Unsloth patches TRL on import).

Contracts the rest of layerloop relies on:

* SFT datasets have ``prompt``/``completion`` text columns or a ``messages`` column ending with the
  assistant's turn. Both are rendered with the tokenizer's chat template exactly as
  :func:`agent.llm.format_prompt` renders a prompt at inference, and the loss covers the completion
  only (its end-of-turn token included).
* GRPO datasets have a ``prompt`` text column (plus whatever the reward functions read). Prompts are
  rendered with :func:`agent.llm.format_prompt` before TRL sees them, so reward functions and a
  ``rollout_func`` receive plain strings: ``prompts`` already templated, ``completions`` as decoded text.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
import transformers

from agent.llm import format_prompt
from training.model import EMBEDDED, ModelConfig, ensure_embedded, load_model_and_tokenizer

if TYPE_CHECKING:
    import peft
    import trl

BACKENDS = ("trl", "unsloth")
INSTALL_HINT = ("bash scripts/setup-gpu.sh on a machine with an NVIDIA GPU, then run with .venv-unsloth/bin/python "
                "(Unsloth pins trl<=0.24, so it has an environment of its own)")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Linear layers LoRA adapts (Qwen2/Llama names; Unsloth needs them listed)."""
LORA_ALPHA_PER_RANK = 2
"""``lora_alpha = 2 · r``, the usual scaling."""


class BackendError(RuntimeError):
    """The requested training backend is unknown or cannot run on this machine."""


def _missing_for_gpu(package: str, package_hint: str) -> list[str]:
    """What of a CUDA GPU and ``package`` this machine lacks, as phrases for an error message."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False: no NVIDIA GPU, or a CPU-only torch)")
    if importlib.util.find_spec(package) is None:
        missing.append(package_hint)
    return missing


def check_backend(name: str) -> None:
    """Fail with what is missing and how to get it unless backend ``name`` can run here."""
    if name not in BACKENDS:
        raise BackendError(f"backend {name!r}: unknown, choose one of {', '.join(map(repr, BACKENDS))}")
    if name == "trl":
        return
    missing = _missing_for_gpu("unsloth", "the 'unsloth' package (in .venv-unsloth)")
    if missing:
        raise BackendError(f"backend 'unsloth' needs {' and '.join(missing)}; install with {INSTALL_HINT}, "
                           "or use backend: trl (runs on CPU)")


def trl_features() -> dict[str, bool]:
    """What the installed TRL offers that layerloop uses: ``rollout_func`` (multi-turn GRPO, TRL ≥ 0.25) and
    ``vllm_mode`` (vLLM generation colocated with training). Unsloth's environment pins an older TRL, so a
    feature can be missing there; :func:`require_trl_feature` fails naming it."""
    import trl

    init = inspect.signature(trl.GRPOTrainer.__init__).parameters
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    return {"rollout_func": "rollout_func" in init, "vllm_mode": "vllm_mode" in fields}


def require_trl_feature(feature: str, wanted_by: str) -> None:
    """Fail with the TRL version and what to do when ``feature`` (:func:`trl_features`) is missing."""
    import trl

    if not trl_features().get(feature, False):
        raise BackendError(f"{wanted_by} needs TRL's {feature}, which TRL {trl.__version__} lacks (Unsloth pins an "
                           "older TRL): use backend: trl in the main environment, or switch the setting off")


def check_vllm() -> None:
    """Fail with what is missing unless TRL can generate with vLLM here (a CUDA GPU and the vllm package)."""
    missing = _missing_for_gpu("vllm", "the 'vllm' package (pip install vllm, matching the CUDA torch)")
    if missing:
        raise BackendError(f"grpo.use_vllm: true needs {' and '.join(missing)}; set use_vllm: false to generate "
                           "with transformers")


def _checkpointing_field() -> str:
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def cpu_safe_kwargs(report_to: Sequence[str] = ()) -> dict[str, Any]:
    """``TrainingArguments`` overrides for this machine, shared by the SFT and GRPO configs.

    TRL defaults to bf16 and gradient checkpointing; on a CPU both are switched off (bf16 autocast on CPU is
    slow and lossy, checkpointing only trades time for memory a CPU run does not lack) and ``use_cpu`` is
    set. On a GPU, bf16 is used where the card supports it, else fp16, and checkpointing stays on. Data
    loading stays in-process, and nothing is reported unless ``report_to`` names a tracker.
    """
    common: dict[str, Any] = {"dataloader_num_workers": 0, "report_to": list(report_to)}
    if not torch.cuda.is_available():
        return common | {"bf16": False, "fp16": False, _checkpointing_field(): False, "use_cpu": True,
                         "dataloader_pin_memory": False}
    bf16 = torch.cuda.is_bf16_supported()
    return common | {"bf16": bf16, "fp16": not bf16, _checkpointing_field(): True}


def lora_config(r: int) -> peft.LoraConfig:
    """The LoRA adapter layerloop trains: rank ``r`` on every attention and MLP projection (PEFT draws
    its initial weights from the global RNG, which the trainers seed)."""
    import peft

    return peft.LoraConfig(r=r, lora_alpha=LORA_ALPHA_PER_RANK * r, lora_dropout=0.0, bias="none",
                           target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")


# -- loading ----------------------------------------------------------------------------------------------------
def load_model(config: ModelConfig, backend: str = "trl", *, lora: bool = True, lora_r: int = 16,
               load_in_4bit: bool = True, seed: int = 0, device: str | None = None
               ) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """The model and tokenizer to train with ``backend``.

    ``trl``: :func:`training.model.load_model_and_tokenizer` on ``device`` (CUDA when present); LoRA, if
    wanted, is added by the trainer. ``unsloth``: ``FastLanguageModel.from_pretrained`` (4-bit when
    ``load_in_4bit``, else 16-bit) and, with ``lora``, its ``get_peft_model``; the embedded model is passed
    as its cache folder.
    """
    check_backend(backend)
    if backend == "trl":
        return load_model_and_tokenizer(config, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from unsloth import FastLanguageModel  # only on the GPU path, and before anything imports TRL

    source = str(ensure_embedded(config)[0]) if config.name == EMBEDDED else config.name
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=source, max_seq_length=config.max_length_tokens,
                                                         load_in_4bit=load_in_4bit, dtype=None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if lora:
        model = _unsloth_peft(model, lora_r, seed, config.max_length_tokens)
    print(f"model: loaded {source} with Unsloth ({'4-bit' if load_in_4bit else '16-bit'}"
          f"{', LoRA r=' + str(lora_r) if lora else ''})")
    return model, tokenizer


def _unsloth_peft(model: Any, lora_r: int, seed: int, max_length: int) -> Any:
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model, r=lora_r, target_modules=list(LORA_TARGETS), lora_alpha=LORA_ALPHA_PER_RANK * lora_r,
        lora_dropout=0.0, bias="none", use_gradient_checkpointing="unsloth", random_state=seed,
        max_seq_length=max_length)


def _is_peft(model: Any) -> bool:
    return importlib.util.find_spec("peft") is not None and hasattr(model, "peft_config")


def _adapter(model: Any, backend: str, lora: bool, lora_r: int, seed: int, max_length: int
             ) -> tuple[Any, peft.LoraConfig | None]:
    """The model to hand the trainer and the PEFT config to pass with it (None when nothing to add)."""
    if not lora or _is_peft(model):
        return model, None
    if backend == "unsloth":
        return _unsloth_peft(model, lora_r, seed, max_length), None
    return model, lora_config(lora_r)


def _import_trl(backend: str) -> Any:
    check_backend(backend)
    if backend == "unsloth":
        import unsloth  # noqa: F401 - patches TRL's trainers, so it must be imported first
    import trl

    return trl


KEEP_CHECKPOINTS = 2
"""Checkpoints a trainer keeps on disk (the newest, for resuming, and one before it); the default loop's SFT
saves one every 25 steps, 1.8 GB over a run if all were kept."""


# -- SFT --------------------------------------------------------------------------------------------------------
def sft_dataset(dataset: datasets.Dataset, tokenizer: transformers.PreTrainedTokenizerBase) -> datasets.Dataset:
    """``dataset`` as TRL prompt-completion rows rendered the way :func:`format_prompt` renders at inference.

    With a chat template: conversational ``prompt`` (the turns before the answer) and ``completion`` (the
    assistant's turn). Without one: text, the prompt followed by a newline.
    """
    columns = set(dataset.column_names)
    chat = bool(getattr(tokenizer, "chat_template", None))
    if "messages" in columns:
        if not chat:
            raise ValueError("a 'messages' dataset needs a tokenizer with a chat template; "
                             "use prompt/completion columns instead")

        def split(row: dict) -> dict:
            turns = row["messages"]
            if not turns or turns[-1]["role"] != "assistant":
                raise ValueError("each 'messages' row must end with the assistant's turn (the completion)")
            return {"prompt": turns[:-1], "completion": turns[-1:]}

        return dataset.map(split, remove_columns=sorted(columns))
    if not {"prompt", "completion"} <= columns:
        raise ValueError(f"SFT dataset columns {sorted(columns)}: need 'prompt' and 'completion', or 'messages'")
    if chat:
        def to_chat(row: dict) -> dict:
            return {"prompt": [{"role": "user", "content": row["prompt"]}],
                    "completion": [{"role": "assistant", "content": row["completion"]}]}
    else:
        def to_chat(row: dict) -> dict:
            return {"prompt": format_prompt(tokenizer, row["prompt"]), "completion": row["completion"]}
    return dataset.map(to_chat, remove_columns=sorted(columns))


def make_sft_trainer(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                     train_dataset: datasets.Dataset, eval_dataset: datasets.Dataset | None = None, *,
                     output_dir: str, learning_rate: float = 2e-4, batch_size: int = 4, epochs: float = 1.0,
                     warmup_steps: int = 0,
                     max_steps: int = -1, lora: bool = False, lora_r: int = 16, seed: int = 0,
                     logging_steps: int = 10, eval_steps: int = 0, save_steps: int = 0,
                     max_length_tokens: int | None = None, gradient_accumulation_steps: int = 1,
                     backend: str = "trl", report_to: Sequence[str] = ()) -> trl.SFTTrainer:
    """A TRL ``SFTTrainer`` with completion-only loss (``max_steps`` > 0 overrides ``epochs``).

    ``lora`` adds a LoRA adapter of rank ``lora_r`` (PEFT for TRL, ``get_peft_model`` for Unsloth) unless
    the model already carries one. ``eval_steps``/``save_steps`` of 0 switch evaluation/saving off.
    ``max_length_tokens`` defaults to the model's position range; longer rows are truncated at the end.
    """
    trl = _import_trl(backend)
    max_length = max_length_tokens or int(model.config.max_position_embeddings)
    model, peft_config = _adapter(model, backend, lora, lora_r, seed, max_length)
    evaluate = eval_dataset is not None and eval_steps > 0
    args = trl.SFTConfig(
        output_dir=output_dir, learning_rate=learning_rate, warmup_steps=warmup_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        num_train_epochs=epochs, max_steps=max_steps, seed=seed, data_seed=seed, logging_steps=logging_steps,
        eval_strategy="steps" if evaluate else "no", eval_steps=eval_steps if evaluate else None,
        save_strategy="steps" if save_steps > 0 else "no", save_steps=save_steps if save_steps > 0 else 500,
        save_total_limit=KEEP_CHECKPOINTS,
        max_length=max_length, completion_only_loss=True, assistant_only_loss=False, packing=False,
        **cpu_safe_kwargs(report_to))
    return trl.SFTTrainer(
        model=model, args=args, train_dataset=sft_dataset(train_dataset, tokenizer),
        eval_dataset=sft_dataset(eval_dataset, tokenizer) if eval_dataset is not None else None,
        processing_class=tokenizer, peft_config=peft_config)


# -- GRPO -------------------------------------------------------------------------------------------------------
RewardFunc = Callable[..., list[float | None]]
RolloutFunc = Callable[[list[str], Any], dict[str, Any]]
"""TRL 1.16: ``rollout_func(prompts, trainer) -> {"prompt_ids", "completion_ids", "logprobs", ...extra}``;
extra keys reach the reward functions as keyword arguments (``env_mask`` masks environment tokens)."""


def log_step_metric(trainer: Any, name: str, value: float) -> None:
    """Add ``value`` to the GRPO trainer's logs of the current training step as ``name`` (TRL 1.16 averages
    the values a step collects; a rollout function reports through this)."""
    trainer._metrics["train"][name].append(value)


def grpo_dataset(dataset: datasets.Dataset, tokenizer: transformers.PreTrainedTokenizerBase) -> datasets.Dataset:
    """``dataset`` with each ``prompt`` rendered by :func:`format_prompt` (other columns kept for rewards)."""
    if "prompt" not in dataset.column_names:
        raise ValueError(f"GRPO dataset columns {dataset.column_names}: need a 'prompt' column")
    return dataset.map(lambda row: {"prompt": format_prompt(tokenizer, row["prompt"])})


REFERENCE_DIR = "reference-model"
"""Sub-folder of a GRPO run's output holding the KL reference weights (full fine-tuning with beta > 0)."""


def _snapshot_reference(model: transformers.PreTrainedModel, path: Path) -> None:
    """Save the policy's current weights as the KL reference and point the model's config at them.

    TRL 1.16 builds the reference by reloading ``model.config._name_or_path`` from disk: for a model built
    in memory that path is empty (an error), and for a model fine-tuned in this process (SFT, then GRPO) it
    is the checkpoint from before fine-tuning — the wrong reference. A snapshot of the weights as they are
    now is the reference GRPO means.
    """
    model.save_pretrained(path)
    model.config._name_or_path = str(path)


def make_grpo_trainer(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                      train_dataset: datasets.Dataset, reward_funcs: RewardFunc | list[RewardFunc], *,
                      output_dir: str, learning_rate: float = 1e-5, batch_size: int = 8, num_generations: int = 4,
                      max_completion_length: int = 1024, beta: float = 0.0, max_steps: int = 100, seed: int = 0,
                      logging_steps: int = 1, save_steps: int = 0, temperature: float = 1.0, scale_rewards: str = "group",
                      lora: bool = False, lora_r: int = 16, backend: str = "trl",
                      rollout_func: RolloutFunc | None = None, reward_weights: list[float] | None = None,
                      ref_model_sync_steps: int = 0, ref_model_mixup_alpha: float = 0.6,
                      use_vllm: bool = False, report_to: Sequence[str] = ()) -> trl.GRPOTrainer:
    """A TRL ``GRPOTrainer`` generating with the model itself, or with ``use_vllm`` through vLLM colocated on
    the training GPU (TRL's ``vllm_mode="colocate"``; not with a ``rollout_func``, which generates itself).

    ``batch_size`` counts completions per device step: ``batch_size / num_generations`` prompts, each
    sampled ``num_generations`` times. ``beta`` weighs the KL penalty to the model as it is now (0: no
    reference is kept; with LoRA the adapter is switched off for it; otherwise the weights are saved under
    ``output_dir/reference-model`` and reloaded). ``ref_model_sync_steps`` > 0 moves the reference towards
    the policy every that many steps (``ref = alpha · policy + (1 − alpha) · ref``, TRL's ``sync_ref_model``;
    full fine-tuning with ``beta`` > 0 only). ``rollout_func`` replaces TRL's generation (see
    :data:`RolloutFunc`).
    """
    if ref_model_sync_steps > 0 and (beta == 0 or lora):
        raise ValueError(f"ref_model_sync_steps = {ref_model_sync_steps}: syncing the reference model needs beta > 0 "
                         f"(beta = {beta}) and full fine-tuning (lora = {lora})")
    if num_generations < 2:
        raise ValueError(f"num_generations = {num_generations}: GRPO compares completions of one prompt, "
                         "so it needs at least 2")
    if batch_size % num_generations:
        raise ValueError(f"batch_size = {batch_size}: must be a multiple of num_generations ({num_generations}), "
                         f"e.g. {num_generations * max(1, batch_size // num_generations)}")
    trl = _import_trl(backend)
    if rollout_func is not None:
        require_trl_feature("rollout_func", "a custom GRPO rollout (grpo.multi_turn or grpo.expert_guidance)")
    vllm: dict[str, Any] = {"use_vllm": False}
    if use_vllm:
        if rollout_func is not None:
            raise BackendError("grpo.use_vllm: true with a custom rollout (grpo.multi_turn or grpo.expert_guidance) — "
                               "the rollout generates with transformers itself; switch one of them off")
        check_vllm()
        require_trl_feature("vllm_mode", "grpo.use_vllm")
        vllm = {"use_vllm": True, "vllm_mode": "colocate"}
    model, peft_config = _adapter(model, backend, lora, lora_r, seed, int(model.config.max_position_embeddings))
    if beta > 0 and peft_config is None and not _is_peft(model):
        _snapshot_reference(model, Path(output_dir) / REFERENCE_DIR)
    args = trl.GRPOConfig(
        output_dir=output_dir, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, num_generations=num_generations, max_completion_length=max_completion_length,
        beta=beta, max_steps=max_steps, seed=seed, data_seed=seed, logging_steps=logging_steps,
        save_strategy="steps" if save_steps > 0 else "no", save_steps=save_steps if save_steps > 0 else 500,
        save_total_limit=KEEP_CHECKPOINTS,
        temperature=temperature, scale_rewards=scale_rewards, reward_weights=reward_weights, log_completions=False, **vllm,
        sync_ref_model=ref_model_sync_steps > 0, ref_model_sync_steps=max(1, ref_model_sync_steps),
        ref_model_mixup_alpha=ref_model_mixup_alpha, **cpu_safe_kwargs(report_to))
    rollout = {"rollout_func": rollout_func} if rollout_func is not None else {}
    return trl.GRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=args, train_dataset=grpo_dataset(train_dataset, tokenizer),
        processing_class=tokenizer, peft_config=peft_config, **rollout)
