"""Export a tuned model for use outside layerloop: merged safetensors, GGUF (llama.cpp) and ONNX.

- ``safetensors``: a Hugging Face folder (config, ``model.safetensors``, tokenizer files, chat template)
  with any LoRA adapter merged into the weights; ``AutoModelForCausalLM.from_pretrained`` loads it.
- ``gguf``: one file for llama.cpp and the tools built on it, written with the ``gguf`` package: the
  Qwen2 architecture's hyperparameters, the weights in f32 or f16 (norms and biases stay f32), and the
  byte-level BPE tokenizer (tokens, types, merges, special ids, pre-tokenizer, chat template) as metadata.
  transformers reads it back too (``from_pretrained(folder, gguf_file=...)``).
- ``onnx``: the decoder as one graph, ``input_ids`` + ``attention_mask`` -> ``logits``, with dynamic batch
  and sequence axes and no KV cache (each step recomputes the whole sequence, which is cheap for small
  models); :func:`generate_onnx` decodes greedily with ONNX Runtime.

GGUF and ONNX are written from a safetensors folder, so :func:`export_all` writes that first.
``python -m training.export --model DIR --out DIR [--formats safetensors gguf onnx]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import transformers

from agent.llm import format_prompt, load_tokenizer, mark_plain_tokenizer, stop_token_ids
from training.model import NUMBER_SPLIT

FORMATS = ("safetensors", "gguf", "onnx")
GGUF_DTYPES = ("f32", "f16")
SAFETENSORS_DIR = "safetensors"
"""Sub-folder of :func:`export_all`'s output holding the merged Hugging Face model."""
GGUF_FILE = "model.gguf"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
ONNX_INLINE_MAX_BYTES = 1_500_000_000
"""Weights above this go to an external data file beside the ``.onnx`` (protobuf caps a file at 2 GiB)."""

GGUF_PRE_TOKENIZERS = {
    "qwen2": "Split on Qwen2's regex (single digits), then byte-level without its own regex",
    "llama3": "Split on Llama 3's regex (digits in groups of up to three), then byte-level without its own "
              "regex (how training.model builds its tokenizer)",
    "smollm": "Digits one by one, then GPT-2's byte-level regex (training.model's tokenizer before builder 2)",
}
"""llama.cpp ``tokenizer.ggml.pre`` names this exporter can declare, and the Hugging Face pre-tokenizer
each one reproduces exactly (the regexes llama.cpp runs for these names). A tokenizer whose
pre-tokenizer is none of these is refused rather than written with a pre-tokenizer that would split
text differently."""
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


class ExportError(RuntimeError):
    """The model cannot be exported in the requested format, or an optional package is missing."""


def require(module: str, purpose: str) -> ModuleType:
    """Import optional package ``module`` (its PyPI name is the same) or fail saying what needs it and how
    to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"{purpose} needs the '{module}' package, which is not installed: "
                          f"pip install {module}") from err


# -- safetensors ------------------------------------------------------------------------------------------------
def export_safetensors(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                       out_dir: str | Path) -> Path:
    """Save ``model`` (a LoRA adapter merged into a copy of it first) and ``tokenizer`` as a Hugging Face
    folder with safetensors weights; returns the folder. The caller's model is left as it was."""
    out = Path(out_dir)
    if hasattr(model, "peft_config"):
        if not hasattr(model, "merge_and_unload"):
            raise ExportError("the adapter was attached with transformers' load_adapter, which cannot merge it; "
                              "load it with peft.PeftModel.from_pretrained(model, adapter_dir) instead")
        if getattr(model.config, "quantization_config", None) is not None:
            raise ExportError("the model is quantized (4-bit/8-bit): merging a LoRA adapter into quantized weights "
                              "loses precision; load the base model in 16 or 32 bits, apply the adapter, then export")
        model = copy.deepcopy(model).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    mark_plain_tokenizer(tokenizer, out)
    return out


# -- GGUF ---------------------------------------------------------------------------------------------------------
def _rope_theta(config: transformers.PretrainedConfig) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise ExportError(f"rope_type = {kind!r}: only plain rotary embeddings ('default') are exported to GGUF")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ExportError("the model config has no rope_theta")
    return float(theta)


def _check_qwen2(config: transformers.PretrainedConfig) -> None:
    if config.model_type != "qwen2":
        raise ExportError(f"model_type = {config.model_type!r}: the GGUF exporter writes the Qwen2 architecture only")
    if getattr(config, "quantization_config", None) is not None:
        raise ExportError("the checkpoint is quantized; export it from 16- or 32-bit weights")
    if getattr(config, "use_sliding_window", False):
        raise ExportError("use_sliding_window = True: sliding-window attention is not exported to GGUF")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim != config.hidden_size // config.num_attention_heads:
        raise ExportError(f"head_dim = {head_dim}: Qwen2 in llama.cpp needs hidden_size / num_attention_heads "
                          f"({config.hidden_size // config.num_attention_heads})")


def _state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors checkpoint in ``model_dir`` (sharded or not), as stored."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no *.safetensors files (export with export_safetensors first)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[name] = f.get_tensor(name)
    return tensors


def gguf_pre_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase) -> str:
    """The llama.cpp pre-tokenizer name (a key of :data:`GGUF_PRE_TOKENIZERS`) that splits text exactly as
    ``tokenizer`` does, or :class:`ExportError` when none does."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"] or {}
    steps = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and steps[0]["pattern"].get("Regex") == _QWEN2_SPLIT \
            and steps[0].get("behavior") == "Isolated" and not steps[1].get("use_regex", True):
        return "qwen2"
    if kinds == ["Split", "ByteLevel"] and steps[0]["pattern"].get("Regex") == NUMBER_SPLIT \
            and steps[0].get("behavior") == "Isolated" and not steps[1].get("use_regex", True):
        return "llama3"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise ExportError(f"pre-tokenizer {json.dumps(spec)}: no llama.cpp pre-tokenizer is known to split text the "
                      f"same way (supported: {'; '.join(f'{k}: {v}' for k, v in GGUF_PRE_TOKENIZERS.items())})")


def gguf_chat_template(template: str) -> str:
    """``template`` without transformers' ``{% generation %}`` markers (they only mark the assistant span for
    training and render nothing; llama.cpp's Jinja engine does not know them). Each becomes a no-op block
    with the same whitespace control, so the rendering is unchanged."""
    return _GENERATION_TAG.sub(lambda m: f"{{%{m[1]} {'endif' if m[2] else 'if true'} {m[3]}%}}", template)


def _add_tokenizer(writer: Any, gguf: ModuleType, tokenizer: transformers.PreTrainedTokenizerBase,
                   vocab_size: int) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or backend["decoder"] is None or backend["decoder"]["type"] != "ByteLevel":
        decoder = (backend["decoder"] or {}).get("type")
        raise ExportError(f"tokenizer model {backend['model']['type']!r} with decoder {decoder!r}: the GGUF exporter "
                          "writes byte-level BPE tokenizers only")
    by_id = {i: t for t, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ExportError("the tokenizer's ids are not contiguous from 0; llama.cpp needs one token per id")
    if len(by_id) > vocab_size:
        raise ExportError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings")
    added = {t["id"]: t for t in backend["added_tokens"]}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (padding to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(gguf_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ExportError("the tokenizer has no eos token; llama.cpp needs one to stop generating")
    writer.add_eos_token_id(eos)
    # Without a bos id llama.cpp assumes token 11 for byte-level vocabularies; eos is the usual stand-in, and
    # add_bos_token = False keeps it out of prompts.
    writer.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    stops = [i for i in stop_token_ids(tokenizer) if i != eos]
    if stops:
        writer.add_eot_token_id(stops[0])
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(gguf_chat_template(tokenizer.chat_template))


def export_gguf(model_dir: str | Path, out_file: str | Path, dtype: str = "f32", name: str = "layerloop",
                tokenizer: transformers.PreTrainedTokenizerBase | None = None) -> Path:
    """Write the Qwen2 model in safetensors folder ``model_dir`` as a GGUF file; returns its path.

    ``dtype`` ``"f32"`` keeps the weights exact, ``"f16"`` halves the file (matrices only). ``tokenizer`` is
    the one the model was used with; by default the one :func:`agent.llm.load_tokenizer` loads from
    ``model_dir``, as :func:`training.model.load_model_and_tokenizer` does. ``name`` is the file's ``general.name``.
    """
    if dtype not in GGUF_DTYPES:
        raise ExportError(f"dtype = {dtype!r}: choose one of {', '.join(map(repr, GGUF_DTYPES))}")
    gguf = require("gguf", "GGUF export")
    model_dir, out_file = Path(model_dir), Path(out_file)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir}: no config.json; give a folder written by export_safetensors")
    config = transformers.AutoConfig.from_pretrained(model_dir)
    _check_qwen2(config)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_dir)
    tensors = _state_dict(model_dir)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # llama.cpp falls back to token_embd when output is absent
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2])
    try:
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, gguf, tokenizer, config.vocab_size)
        for hf_name, tensor in tensors.items():
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ExportError(f"tensor {hf_name!r} has no GGUF name in the Qwen2 architecture")
            data = tensor.to(torch.float32).numpy()
            if dtype == "f16" and data.ndim > 1:  # norms and biases stay f32, as llama.cpp expects
                data = data.astype(np.float16)
            writer.add_tensor(gguf_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out_file


# -- ONNX ---------------------------------------------------------------------------------------------------------
class _LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) -> logits`` without a KV cache. Positions count only real tokens, as
    ``generate`` does, so left-padded batches decode like unpadded prompts."""

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


def export_onnx(model_dir: str | Path, out_file: str | Path) -> Path:
    """Export the causal LM in ``model_dir`` to ONNX (float32, opset :data:`ONNX_OPSET`): inputs ``input_ids``
    and ``attention_mask`` (int64, batch x sequence), output ``logits`` (batch x sequence x vocabulary);
    returns the file (weights over :data:`ONNX_INLINE_MAX_BYTES` go to ``<file>.data`` beside it)."""
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export (torch's exporter)")
    model_dir, out_file = Path(model_dir), Path(out_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                             attn_implementation="eager")
    model.eval()
    wrapper = _LogitsOnly(model).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    example = (torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long))
    axes = {0: "batch", 1: "sequence"}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # Noise from torch's exporter that no caller can act on: each axis name "will not be used" (it is),
        # and a deprecation inside torch.export itself.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(wrapper, example, str(out_file), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=ONNX_OPSET, dynamo=True,
                          external_data=weight_bytes > ONNX_INLINE_MAX_BYTES,
                          dynamic_shapes={"input_ids": axes, "attention_mask": axes}, verbose=False)
    return out_file


def generate_onnx(onnx_file: str | Path, tokenizer: transformers.PreTrainedTokenizerBase, prompts: Sequence[str],
                  max_new_tokens: int) -> list[str]:
    """Greedy completions of ``prompts`` (formatted with the chat template, as :func:`agent.llm.generate`
    does) by the ONNX model, one prompt at a time, stopping at eos or ``<|im_end|>``."""
    ort = require("onnxruntime", "running an ONNX export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    stops = set(stop_token_ids(tokenizer))
    templated = bool(getattr(tokenizer, "chat_template", None))
    out = []
    for prompt in prompts:
        ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=not templated)["input_ids"]
        seq = np.asarray([ids], dtype=np.int64)
        new: list[int] = []
        for _ in range(max_new_tokens):
            logits = session.run(["logits"], {"input_ids": seq, "attention_mask": np.ones_like(seq)})[0]
            token = int(logits[0, -1].argmax())
            if token in stops:
                break
            new.append(token)
            seq = np.concatenate([seq, [[token]]], axis=1)
        out.append(tokenizer.decode(new, skip_special_tokens=True))
    return out


# -- all ----------------------------------------------------------------------------------------------------------
def export_all(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
               out_dir: str | Path, formats: Sequence[str] = FORMATS, gguf_dtype: str = "f32") -> dict[str, Path]:
    """Export ``model`` in each of ``formats`` under ``out_dir``: ``safetensors/``, ``model.gguf`` and
    ``model.onnx``. The merged safetensors folder is always written (the other two are made from it).
    Returns format -> path. Missing optional packages are reported before anything is written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"formats {unknown}: choose from {', '.join(FORMATS)}")
    if "gguf" in formats:
        require("gguf", "GGUF export")
    if "onnx" in formats:
        require("onnx", "ONNX export")
        require("onnxscript", "ONNX export (torch's exporter)")
    out = Path(out_dir)
    paths = {"safetensors": export_safetensors(model, tokenizer, out / SAFETENSORS_DIR)}
    if "gguf" in formats:
        paths["gguf"] = export_gguf(paths["safetensors"], out / GGUF_FILE, gguf_dtype, tokenizer=tokenizer)
    if "onnx" in formats:
        paths["onnx"] = export_onnx(paths["safetensors"], out / ONNX_FILE)
    return {f: paths[f] for f in formats}


def main(argv: Sequence[str] | None = None) -> None:
    """Load a model folder (merged or a PEFT adapter folder), export it, print each file and its size."""
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder (or a PEFT adapter folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--gguf-dtype", default="f32", choices=GGUF_DTYPES)
    args = parser.parse_args(argv)
    source = tokenizer_source = Path(args.model)
    if not (source / "config.json").is_file() and not (source / "adapter_config.json").is_file():
        parser.exit(2, f"export: --model {args.model}: not a saved model folder (no config.json or "
                       "adapter_config.json): give a trained model's folder, e.g. RUN/grpo/final\n")
    if (source / "adapter_config.json").is_file():
        import peft

        model = peft.AutoPeftModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        if not (source / "tokenizer_config.json").is_file():  # adapters are often saved without the tokenizer
            tokenizer_source = Path(model.peft_config["default"].base_model_name_or_path)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = load_tokenizer(tokenizer_source)
    try:
        paths = export_all(model, tokenizer, args.out, args.formats, args.gguf_dtype)
    except ExportError as err:
        parser.exit(2, f"export: {err}\n")
    for fmt, path in paths.items():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        print(f"{fmt}: {path} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
