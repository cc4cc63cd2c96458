"""The embedded model and tokenizer, prompting and decoding, and the TRL/Unsloth adapter (tiny real runs)."""

from __future__ import annotations

import copy
import importlib.util
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets
import pytest
import torch
import transformers
from conftest import TINY_MODEL

from agent.llm import IM_END, format_prompt, generate
from sim_bridge.config import ConfigError, from_dict
from training import backend, model
from training.backend import BackendError, check_backend, make_grpo_trainer, make_sft_trainer
from training.model import (
    MARKER_FILE,
    ModelConfig,
    build_model,
    build_tokenizer,
    cache_key,
    corpus_texts,
    ensure_embedded,
    load_model_and_tokenizer,
)

torch.set_num_threads(1)

GCODE = "G1 X100.225 Y119.775 E0.73152 F1200\n"


@pytest.fixture(scope="module")
def cfg(tiny_model_config: ModelConfig) -> ModelConfig:
    return tiny_model_config


@pytest.fixture(scope="module")
def loaded(cfg: ModelConfig) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    path, built = ensure_embedded(cfg)
    assert built and (path / MARKER_FILE).is_file()
    return load_model_and_tokenizer(cfg)


@pytest.fixture(scope="module")
def unseen_texts() -> list[str]:
    """Prompts and G-code from jobs the tokenizer was not trained on (another seed)."""
    return list(corpus_texts(2, seed=4242))


def _examples(n: int = 8) -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {"prompt": f"Write layer {i} at Z={0.2 * (i + 1):.3f} mm.",
         "completion": f";LAYER_CHANGE\nG1 Z{0.2 * (i + 1):.1f} F300\nG1 X1{i}.5 Y2{i} E0.0{i}3 F1200\n"}
        for i in range(n)])


# -- config ---------------------------------------------------------------------------------------------------
def test_config_validated_on_load():
    assert from_dict(ModelConfig, {"name": "embedded", "hidden_size": 64}).hidden_size == 64
    with pytest.raises(ConfigError, match="did you mean 'num_layers'"):
        from_dict(ModelConfig, {"num_layer": 3})
    with pytest.raises(ConfigError, match="vocab_size"):
        from_dict(ModelConfig, {"vocab_size": 100})
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        from_dict(ModelConfig, {"hidden_size": 130})
    with pytest.raises(ConfigError, match="must divide num_heads"):
        from_dict(ModelConfig, {"num_kv_heads": 3})


def test_cache_key_covers_shape_not_location():
    base = ModelConfig(**TINY_MODEL)
    assert cache_key(base) == cache_key(ModelConfig(cache_dir="/elsewhere", **TINY_MODEL))
    assert cache_key(base) != cache_key(ModelConfig(**{**TINY_MODEL, "hidden_size": 64}))
    assert cache_key(base) != cache_key(ModelConfig(**{**TINY_MODEL, "corpus_jobs": 4}))
    assert cache_key(base) != cache_key(ModelConfig(**{**TINY_MODEL, "seed": 1}))


# -- tokenizer ------------------------------------------------------------------------------------------------
def test_round_trip_is_exact_on_real_prompts_and_gcode(loaded, unseen_texts):
    _, tok = loaded
    assert any(t.startswith("Task:") for t in unseen_texts) and any(";LAYER_CHANGE" in t for t in unseen_texts)
    for text in [*unseen_texts, GCODE, "  two  spaces\n\n\tTAB\r\nCRLF ", "hotend 210\u00b0C \u2014 ok"]:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_numbers_are_split_in_groups_of_three_digits(loaded):
    _, tok = loaded
    pieces = [tok.decode([i]) for i in tok("G1 X140.944 Y9.5 E0.41881 F12000\n")["input_ids"]]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "140", "944", "9", "5", "0", "418", "81",
                                                                   "120", "00"]
    for token_id in range(len(tok)):
        piece = tok.decode([token_id])
        assert not any(c.isdigit() for c in piece) or (piece.isdigit() and len(piece) <= 3), piece


def test_every_group_of_up_to_three_digits_is_one_token(loaded):
    """The default vocabulary holds every digit group, whether or not the corpus wrote it."""
    _, tok = loaded
    for group in ["0", "7", "00", "09", "99", "000", "007", "100", "999", "318", "642"]:
        assert len(tok(group)["input_ids"]) == 1, group


def test_special_tokens_and_chat_template(loaded):
    _, tok = loaded
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids(IM_END) != tok.unk_token_id
    assert format_prompt(tok, "Task: home.") == "<|im_start|>user\nTask: home.<|im_end|>\n<|im_start|>assistant\n"
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "G28\n"}]
    assert tok.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nG28\n<|im_end|>\n")
    # The stop token is part of the assistant's trained span.
    enc = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(trained) == "G28\n<|im_end|>"
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    assert format_prompt(plain, "Task: home.") == "Task: home.\n"


def test_tokenizer_training_is_deterministic(unseen_texts):
    a, b = build_tokenizer(unseen_texts, 400), build_tokenizer(unseen_texts, 400)
    assert a.get_vocab() == b.get_vocab() and len(a) <= 400


# -- model, cache -----------------------------------------------------------------------------------------------
def test_model_shape_and_determinism(loaded, cfg):
    m, tok = loaded
    assert isinstance(m, transformers.Qwen2ForCausalLM)
    assert m.config.hidden_size == cfg.hidden_size and m.config.num_hidden_layers == cfg.num_layers
    assert m.config.vocab_size == len(tok)
    before = torch.random.get_rng_state()
    a, b = build_model(cfg, tok), build_model(cfg, tok)
    assert torch.equal(torch.random.get_rng_state(), before), "building a model must not consume the global RNG"
    other = build_model(ModelConfig(**{**TINY_MODEL, "seed": 1}), tok)
    sa, sb, so = a.state_dict(), b.state_dict(), other.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], so[k]) for k in sa)
    # The cached model is the built one.
    assert all(torch.equal(sa[k], v) for k, v in m.state_dict().items())


def test_second_load_uses_the_cache(loaded, cfg, monkeypatch, capsys):
    def no_corpus(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(model, "corpus_texts", no_corpus)
    path, built = ensure_embedded(cfg)
    assert not built
    m, tok = load_model_and_tokenizer(cfg)
    assert "loaded embedded model" in capsys.readouterr().out
    assert tok.decode(tok(GCODE)["input_ids"]) == GCODE


def test_incomplete_cache_entry_is_rebuilt(tmp_path, monkeypatch, unseen_texts):
    monkeypatch.setattr(model, "corpus_texts", lambda jobs, seed: iter(unseen_texts))
    cfg = ModelConfig(cache_dir=str(tmp_path), **{**TINY_MODEL, "seed": 7})
    target = model.cache_path(cfg)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half written", encoding="utf-8")
    path, built = ensure_embedded(cfg)
    assert built and path == target and (path / MARKER_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "no temporary folder is left behind"


def test_hugging_face_path_loads_offline(loaded, tmp_path, capsys):
    m, tok = loaded
    m.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m2, tok2 = load_model_and_tokenizer(ModelConfig(name=str(tmp_path)))
    assert f"loaded model {tmp_path}" in capsys.readouterr().out
    assert tok2.chat_template == tok.chat_template and tok2.pad_token == tok.pad_token
    assert m2.dtype == torch.float32


# -- generation -----------------------------------------------------------------------------------------------
def test_generate_batched_greedy_matches_one_by_one(loaded):
    m, tok = loaded
    prompts = ["Task: write layer 1.", "Task: a much longer prompt, so the batch needs left padding: G1 X1 Y2."]
    batched = generate(m, tok, prompts, max_new_tokens=12)
    assert len(batched) == 2 and all(isinstance(t, str) and t for t in batched)
    assert batched == [generate(m, tok, [p], max_new_tokens=12)[0] for p in prompts]
    sampled = generate(m, tok, prompts, max_new_tokens=12, temperature=1.0, seed=3)
    assert sampled == generate(m, tok, prompts, max_new_tokens=12, temperature=1.0, seed=3)


def test_generate_stops_at_im_end(loaded):
    m, tok = loaded
    im_end = tok.convert_tokens_to_ids(IM_END)
    calls = []

    def prefer_im_end(module, inputs, output):
        calls.append(1)
        output = output.clone()
        output[..., im_end] += 1e4
        return output

    handle = m.lm_head.register_forward_hook(prefer_im_end)
    try:
        assert generate(m, tok, ["Task: stop at once.", "Another"], max_new_tokens=20) == ["", ""]
    finally:
        handle.remove()
    assert len(calls) == 1, "generation went on past <|im_end|>"


# -- backend ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None,
                    reason="Unsloth can run here")
def test_unsloth_fails_clearly_without_a_gpu_or_the_extra():
    with pytest.raises(BackendError, match=r"CUDA|unsloth") as err:
        check_backend("unsloth")
    assert "scripts/setup-gpu.sh" in str(err.value)
    with pytest.raises(BackendError, match="setup-gpu.sh"):
        backend.load_model(ModelConfig(), backend="unsloth")


def test_vllm_and_trl_features_fail_clearly_where_missing():
    from training.grpo import GRPOSettings

    features = backend.trl_features()
    assert set(features) == {"rollout_func", "vllm_mode"} and all(isinstance(v, bool) for v in features.values())
    with pytest.raises(ConfigError, match="use_vllm: true with multi_turn: true"):
        GRPOSettings(use_vllm=True, multi_turn=True)
    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        with pytest.raises(BackendError, match="grpo.use_vllm: true needs") as err:
            backend.check_vllm()
        assert "use_vllm: false" in str(err.value)
    with pytest.raises(BackendError, match="lacks"):
        backend.require_trl_feature("no_such_feature", "a test")


def test_unknown_backend_lists_choices():
    check_backend("trl")
    with pytest.raises(BackendError, match="'trl', 'unsloth'"):
        check_backend("jax")


def test_cpu_safe_kwargs_turn_off_bf16_and_checkpointing():
    if torch.cuda.is_available():
        pytest.skip("CPU overrides only")
    kwargs = backend.cpu_safe_kwargs()
    assert kwargs["bf16"] is False and kwargs["fp16"] is False and kwargs["use_cpu"] is True
    assert kwargs["report_to"] == [] and kwargs["dataloader_num_workers"] == 0
    args = transformers.TrainingArguments(output_dir="unused", **kwargs)
    assert args.gradient_checkpointing is False and args.bf16 is False


def test_sft_dataset_renders_like_inference(loaded):
    _, tok = loaded
    rows = backend.sft_dataset(_examples(2), tok)
    assert tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True) == \
        format_prompt(tok, _examples(2)[0]["prompt"])
    chat = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "U"},
                                                     {"role": "assistant", "content": "G28\n"}]}])
    split = backend.sft_dataset(chat, tok)[0]
    assert split["prompt"] == [{"role": "user", "content": "U"}]
    assert split["completion"] == [{"role": "assistant", "content": "G28\n"}]
    with pytest.raises(ValueError, match="prompt"):
        backend.sft_dataset(datasets.Dataset.from_list([{"text": "x"}]), tok)


def test_sft_runs_three_steps_on_cpu(loaded, cfg, tmp_path):
    _, tok = loaded
    m = build_model(cfg, tok)
    trainer = make_sft_trainer(m, tok, _examples(8), _examples(2), output_dir=str(tmp_path), batch_size=2,
                               max_steps=3, logging_steps=1, eval_steps=3, learning_rate=1e-3)
    assert trainer.args.bf16 is False and trainer.args.gradient_checkpointing is False
    row = trainer.train_dataset[0]
    trained = [label for label in row["labels"] if label != -100]
    assert row["labels"][0] == -100 and trained, "loss on the completion only"
    assert tok.decode(trained) == _examples(1)[0]["completion"] + f"{IM_END}\n"
    out = trainer.train()
    assert trainer.state.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in [*losses, out.training_loss])
    assert any("eval_loss" in h and math.isfinite(h["eval_loss"]) for h in trainer.state.log_history)


def test_sft_with_lora_trains_only_the_adapter(loaded, cfg, tmp_path):
    _, tok = loaded
    trainer = make_sft_trainer(build_model(cfg, tok), tok, _examples(4), output_dir=str(tmp_path), batch_size=2,
                               max_steps=1, lora=True, lora_r=4, logging_steps=1)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert math.isfinite(trainer.train().training_loss)


def test_grpo_runs_one_step_with_a_length_reward(loaded, cfg, tmp_path):
    _, tok = loaded
    seen: dict[str, list] = {}

    def length_reward(completions, prompts, **kwargs):
        seen["completions"], seen["prompts"], seen["layer"] = completions, prompts, kwargs["layer"]
        return [len(c) / 16.0 for c in completions]

    ds = _examples(4).remove_columns("completion").add_column("layer", [0, 1, 2, 3])
    trainer = make_grpo_trainer(build_model(cfg, tok), tok, ds, length_reward, output_dir=str(tmp_path),
                                batch_size=2, num_generations=2, max_completion_length=16, max_steps=1,
                                beta=0.04, temperature=1.0, scale_rewards="none")
    assert trainer.args.bf16 is False and trainer.args.use_vllm is False
    assert trainer.args.scale_rewards == "none"  # reaches TRL: advantages are not divided by the group's spread
    # The KL reference is the policy as handed over (TRL reloads it from the model's path).
    assert trainer.ref_model is not None
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), trainer.ref_model.parameters(),
                                                 strict=True))
    trainer.train()
    assert trainer.state.global_step == 1
    assert len(seen["completions"]) == 2 and all(isinstance(c, str) for c in seen["completions"])
    assert seen["prompts"][0].startswith("<|im_start|>user\n") and seen["prompts"][0] == seen["prompts"][1]
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and math.isfinite(logged[0]["loss"]) and math.isfinite(logged[0]["reward"])


def test_grpo_batch_must_hold_whole_groups(loaded, cfg, tmp_path):
    m, tok = loaded
    with pytest.raises(ValueError, match="multiple of num_generations"):
        make_grpo_trainer(m, tok, _examples(2), lambda completions, **kw: [0.0] * len(completions),
                          output_dir=str(tmp_path), batch_size=3, num_generations=2)
