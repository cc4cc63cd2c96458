"""Export of a LoRA-tuned embedded model to merged safetensors, GGUF and ONNX; each export reloaded and
made to generate (tiny real runs)."""

from __future__ import annotations

import importlib
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import peft
import pytest
import tokenizers
import torch
import transformers

from agent.llm import MARKER_FILE, format_prompt, generate, load_tokenizer
from training import export
from training.backend import lora_config
from training.export import (
    ExportError,
    export_all,
    export_gguf,
    generate_onnx,
    gguf_chat_template,
    gguf_pre_tokenizer,
)
from training.model import (
    ModelConfig,
    build_tokenizer,
    corpus_texts,
    ensure_embedded,
    load_model_and_tokenizer,
)

torch.set_num_threads(1)

NEW_TOKENS = 16
LORA_B_STD = 0.5
"""PEFT starts LoRA's B at zero (the adapter does nothing); random B makes merging change the output."""


def _missing(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError:
        return f"'{module}' is not installed (pip install {module})"
    return None


needs_gguf = pytest.mark.skipif(_missing("gguf") is not None, reason=str(_missing("gguf")))
needs_onnx = pytest.mark.skipif(any(map(_missing, ("onnx", "onnxscript", "onnxruntime"))),
                                reason="ONNX export needs onnx, onnxscript and onnxruntime (pip install them)")


@pytest.fixture(scope="module")
def cfg(tiny_model_config: ModelConfig) -> ModelConfig:
    return tiny_model_config


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """A real task prompt (cut to fit the tiny model's positions) and a G-code line."""
    return [next(iter(corpus_texts(1, seed=7)))[:400], "G1 X100.225 Y119.775 E0.73152 F1200\n"]


@pytest.fixture(scope="module")
def tuned(cfg):
    """The embedded model with a LoRA adapter of random, non-zero weights, and its tokenizer."""
    base, tok = load_model_and_tokenizer(cfg)
    torch.manual_seed(0)
    model = peft.get_peft_model(base, lora_config(4))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * LORA_B_STD)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def expected(tuned, prompts) -> list[str]:
    model, tok = tuned
    return generate(model, tok, prompts, NEW_TOKENS)


@pytest.fixture(scope="module")
def exported(tuned, tmp_path_factory):
    model, tok = tuned
    formats = ["safetensors"] + (["gguf"] if not _missing("gguf") else []) + \
        (["onnx"] if not any(map(_missing, ("onnx", "onnxscript", "onnxruntime"))) else [])
    return export_all(model, tok, tmp_path_factory.mktemp("export"), formats)


def _prompt_ids(tok, prompt: str) -> torch.Tensor:
    return tok(format_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)["input_ids"]


# -- safetensors ------------------------------------------------------------------------------------------------
def test_the_adapter_matters_and_the_callers_model_is_untouched(tuned, prompts, expected, exported):
    model, tok = tuned
    with model.disable_adapter():
        assert generate(model, tok, prompts, NEW_TOKENS) != expected, "the LoRA adapter should change the output"
    assert hasattr(model, "peft_config") and any("lora_B" in n for n, _ in model.named_parameters())
    assert generate(model, tok, prompts, NEW_TOKENS) == expected


def test_safetensors_reload_generates_identically(exported, prompts, expected):
    folder = exported["safetensors"]
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = load_tokenizer(folder)
    assert (folder / MARKER_FILE).is_file() and type(tok) is transformers.PreTrainedTokenizerFast
    assert isinstance(model, transformers.Qwen2ForCausalLM)
    assert not any("lora" in k for k in model.state_dict()), "the adapter must be merged, not saved beside"
    assert generate(model, tok, prompts, NEW_TOKENS) == expected


# -- GGUF -------------------------------------------------------------------------------------------------------
@needs_gguf
def test_gguf_metadata_is_what_llama_cpp_reads(exported, tuned):
    import gguf

    model, tok = tuned
    reader = gguf.GGUFReader(exported["gguf"])
    meta = {k: f.contents() for k, f in reader.fields.items()}
    c = model.config
    assert meta["general.architecture"] == "qwen2"
    assert (meta["qwen2.block_count"], meta["qwen2.embedding_length"], meta["qwen2.feed_forward_length"],
            meta["qwen2.attention.head_count"], meta["qwen2.attention.head_count_kv"],
            meta["qwen2.context_length"]) == (c.num_hidden_layers, c.hidden_size, c.intermediate_size,
                                              c.num_attention_heads, c.num_key_value_heads,
                                              c.max_position_embeddings)
    assert meta["qwen2.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "llama3"
    assert len(meta["tokenizer.ggml.tokens"]) == len(tok) == c.vocab_size
    assert meta["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["tokenizer.ggml.token_type"][:4] == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert meta["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert "endgeneration" not in meta["tokenizer.chat_template"]
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names, "tied embeddings: llama.cpp reuses token_embd"
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.bias", "blk.1.ffn_down.weight"} <= set(names)
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}


@needs_gguf
def test_gguf_f32_reloads_with_transformers_and_generates_identically(exported, prompts, expected, tuned):
    folder, name = exported["gguf"].parent, exported["gguf"].name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    merged = transformers.AutoModelForCausalLM.from_pretrained(exported["safetensors"]).state_dict()
    assert all(torch.equal(v, merged[k]) for k, v in model.state_dict().items())
    assert generate(model, tok, prompts, NEW_TOKENS) == expected
    # The tokenizer rebuilt from the GGUF metadata tokenizes and templates as the original does.
    _, original = tuned
    for text in [*corpus_texts(1, seed=4242), "  two  spaces\n\n\tTAB\r\n", "it's IT'S <|im_end|>"]:
        assert tok(text)["input_ids"] == original(text)["input_ids"]
    chat = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "G28\n"}]
    assert tok.apply_chat_template(chat, tokenize=False) == original.apply_chat_template(chat, tokenize=False)


@needs_gguf
def test_gguf_f16_halves_the_matrices_and_keeps_the_first_tokens(exported, prompts, tuned, tmp_path):
    import gguf

    path = export_gguf(exported["safetensors"], tmp_path / "model-f16.gguf", dtype="f16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_q.bias"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert path.stat().st_size < 0.6 * exported["gguf"].stat().st_size
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)
    merged = transformers.AutoModelForCausalLM.from_pretrained(exported["safetensors"])
    _, tok = tuned
    for prompt in prompts:
        ids = _prompt_ids(tok, prompt)
        with torch.no_grad():
            a, b = merged(ids).logits, model(ids).logits
        assert (a - b).abs().max() < 0.05 * a.abs().max(), "f16 rounding moves logits by a few percent at most"
        assert torch.equal(a[0, -1].argmax(), b[0, -1].argmax()), "f16 must keep the first greedy token"


@needs_gguf
def test_gguf_untied_head_and_padded_vocabulary(tuned, prompts, tmp_path):
    """A model (no adapter) with its own output head and more embedding rows than tokens, as many hub
    models have: the head is written as ``output.weight`` and the spare rows as unused tokens."""
    import gguf

    _, tok = tuned
    spare = 6
    config = transformers.Qwen2Config(vocab_size=len(tok) + spare, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                      max_position_embeddings=512, tie_word_embeddings=False,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    model = transformers.Qwen2ForCausalLM(config).eval()
    folder = export.export_safetensors(model, tok, tmp_path / "hf")
    path = export_gguf(folder, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(path)
    tokens, types = (reader.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "token_type"))
    assert tokens[-spare:] == [f"[PAD{i}]" for i in range(len(tok), len(tok) + spare)]
    assert types[-spare:] == [gguf.TokenType.UNUSED] * spare
    assert "output.weight" in {t.name for t in reader.tensors}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)
    assert not reloaded.config.tie_word_embeddings
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in reloaded.state_dict().items())
    assert generate(reloaded, tok, prompts, NEW_TOKENS) == generate(model, tok, prompts, NEW_TOKENS)


@needs_gguf
def test_gguf_refuses_what_it_cannot_write_faithfully(exported, tmp_path, cfg):
    with pytest.raises(ExportError, match="dtype = 'q4_0'"):
        export_gguf(exported["safetensors"], tmp_path / "x.gguf", dtype="q4_0")
    with pytest.raises(ExportError, match="no config.json"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    # The tokenizer as built (Llama 3's split: digits in groups of three) is llama.cpp's "llama3"; the older
    # build (digits one by one, then GPT-2's regex) is "smollm"; an unknown split is refused.
    raw = build_tokenizer(["G1 X10 Y20\n"] * 3, 300)
    assert gguf_pre_tokenizer(raw) == "llama3"
    from tokenizers import pre_tokenizers

    raw.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert gguf_pre_tokenizer(raw) == "smollm"
    raw.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ExportError, match="no llama.cpp pre-tokenizer"):
        gguf_pre_tokenizer(raw)


def test_chat_template_loses_only_the_generation_markers(tuned):
    _, tok = tuned
    plain = gguf_chat_template(tok.chat_template)
    assert "{%- generation -%}" in tok.chat_template
    assert "{%- generation -%}" not in plain and "endgeneration" not in plain
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "G28\n"}]
    for turns, prompt in [(chat, False), (chat[:2], True)]:
        assert tok.apply_chat_template(turns, tokenize=False, chat_template=plain, add_generation_prompt=prompt) \
            == tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)


@pytest.mark.skipif(_missing("llama_cpp") is not None, reason="llama.cpp's Python binding is not installed "
                    "(pip install llama-cpp-python, which compiles llama.cpp)")
@needs_gguf
def test_gguf_runs_in_llama_cpp(exported, prompts, expected, tuned, cfg, tmp_path):
    import llama_cpp

    _, tok = tuned
    texts = [*corpus_texts(1, seed=4242), *prompts, "  two  spaces\n\n\tTAB 12  34\r\n"]
    llm = llama_cpp.Llama(str(exported["gguf"]), n_ctx=512, n_threads=1, verbose=False)
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"]
    for prompt, want in zip(prompts, expected, strict=True):
        out = []
        for token in llm.generate(_prompt_ids(tok, prompt)[0].tolist(), temp=0.0, top_k=1, reset=True):
            if token in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) or len(out) == NEW_TOKENS:
                break
            out.append(token)
        assert tok.decode(out, skip_special_tokens=True) == want
    # The tokenizer above is training.model's (Llama 3's split, declared "llama3"). The same vocabulary
    # behind Qwen2's split (single digits) is declared "qwen2", and llama.cpp then splits text as it does.
    assert export.gguf_pre_tokenizer(tok) == "llama3"
    single = transformers.PreTrainedTokenizerFast.from_pretrained(ensure_embedded(cfg)[0])
    spec = json.loads(single.backend_tokenizer.to_str())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = export._QWEN2_SPLIT
    single._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec))
    assert export.gguf_pre_tokenizer(single) == "qwen2"
    assert any(single(t)["input_ids"] != tok(t)["input_ids"] for t in texts), "the two splits should differ here"
    path = export_gguf(exported["safetensors"], tmp_path / "single-digits.gguf", tokenizer=single)
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False)
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == single(text)["input_ids"]


# -- ONNX -------------------------------------------------------------------------------------------------------
@needs_onnx
def test_onnx_greedy_decoding_matches_torch(exported, prompts, expected, tuned):
    _, tok = tuned
    assert generate_onnx(exported["onnx"], tok, prompts, NEW_TOKENS) == expected


@needs_onnx
def test_onnx_logits_match_on_a_left_padded_batch(exported, prompts, tuned):
    import onnxruntime as ort

    _, tok = tuned
    merged = transformers.AutoModelForCausalLM.from_pretrained(exported["safetensors"])
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 2
    assert tok.padding_side == "left"
    batch = tok([format_prompt(tok, p) for p in prompts], return_tensors="np", padding=True,
                add_special_tokens=False)
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    assert mask.min() == 0, "the prompts should differ in length so the batch is padded"
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            want = merged(_prompt_ids(tok, prompt)).logits[0, -1].numpy()
        np.testing.assert_allclose(logits[row, -1], want, atol=1e-4, rtol=1e-4)


# -- errors and the command line --------------------------------------------------------------------------------
def test_missing_packages_name_the_pip_command(tuned, tmp_path, monkeypatch):
    model, tok = tuned
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ExportError, match="'gguf' package, which is not installed: pip install gguf"):
        export_all(model, tok, tmp_path / "out", formats=("safetensors", "gguf"))
    assert not (tmp_path / "out").exists(), "nothing is written when a package is missing"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match="pip install onnxruntime"):
        generate_onnx(tmp_path / "model.onnx", tok, ["G28"], 1)
    with pytest.raises(ExportError, match="formats \\['tflite'\\]"):
        export_all(model, tok, tmp_path / "out", formats=("tflite",))


@needs_gguf
def test_cli_merges_an_adapter_folder_and_prints_sizes(tuned, cfg, prompts, expected, tmp_path, capsys):
    model, _ = tuned
    model.save_pretrained(tmp_path / "adapter")  # adapter weights only; its config points at the base folder
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    export.main(["--model", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"),
                 "--formats", "safetensors", "gguf"])
    out = capsys.readouterr().out
    assert "safetensors: " in out and "gguf: " in out and " MB)" in out
    folder = tmp_path / "out" / export.SAFETENSORS_DIR
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert generate(reloaded, load_tokenizer(folder), prompts, NEW_TOKENS) == expected


def test_a_missing_model_is_a_clear_error_not_a_hub_lookup(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as exit_:
        export.main(["--model", "runs/nosuch", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "runs/nosuch: not a saved model folder" in capsys.readouterr().err
    from agent.llm import load_pretrained  # the loader every command shares
    from sim_bridge.config import ConfigError  # its error type

    for missing in ("runs/nosuch", "./nosuch", str(tmp_path / "a" / "b")):
        with pytest.raises(ConfigError, match="no such folder"):
            load_pretrained(missing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="layerloop-test/no-such-model: not a model folder here"):
        load_pretrained("layerloop-test/no-such-model")
