"""bench/vram_sweep.py plumbing: sparse shape checkpoints, synthetic rows, the grid, resuming, and
one real CPU point through `python -m core train`."""

from __future__ import annotations

import json
import os

import pytest

from bench import vram_sweep as sweep
from core.hardware.catalog import Arch, get_model, param_count


def _sparse_files_supported(tmp_path) -> bool:
    probe = tmp_path / "probe"
    with probe.open("wb") as f:
        f.truncate(1 << 30)
    ok = os.stat(probe).st_blocks * 512 < (1 << 20)
    probe.unlink()
    return ok


@pytest.mark.parametrize("key", ["qwen3-0.6b", "qwen3-8b"])
def test_tensor_names_and_shapes_are_transformers(key):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    a = get_model(key).arch
    cfg = Qwen3Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      head_dim=a.head_dim, tie_word_embeddings=a.tied_embeddings)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    if a.tied_embeddings:
        expected.pop("lm_head.weight")  # tied: saved once, as the embedding
    assert dict(sweep.tensor_shapes(a)) == expected


def test_sparse_32b_checkpoint_takes_no_disk(tmp_path):
    if not _sparse_files_supported(tmp_path):
        pytest.skip("this filesystem has no sparse files")
    from safetensors import safe_open

    a = get_model("qwen3-32b").arch
    prefix = {"model.embed_tokens.weight": sweep.random_bf16(4, a.hidden, seed=1)}
    size = sweep.write_sharded(tmp_path, sweep.tensor_shapes(a), prefix)
    assert size == param_count(a) * 2  # 65 GB of bf16 weights
    files = sorted(tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == size and len(files) == len(set(index["weight_map"].values()))
    assert sum(os.path.getsize(f) for f in files) > size
    assert all(os.path.getsize(f) < sweep.SHARD_BYTES + (64 << 20) for f in files)
    assert sum(os.stat(f).st_blocks * 512 for f in files) < 64 << 20  # almost nothing on disk
    assert set(index["weight_map"]) == {name for name, _ in sweep.tensor_shapes(a)}
    with safe_open(tmp_path / index["weight_map"]["model.embed_tokens.weight"], "pt") as f:
        embed = f.get_slice("model.embed_tokens.weight")
        assert list(embed.get_shape()) == [151936, 5120]
        head = embed[:4]
        assert 0 < head.abs().max() < 0.2
        assert embed[100000:100004].abs().max() == 0
    name = "model.layers.63.input_layernorm.weight"
    with safe_open(tmp_path / index["weight_map"][name], "pt") as f:
        assert (f.get_tensor(name) == 1).all()
    name = "model.layers.63.mlp.down_proj.weight"
    with safe_open(tmp_path / index["weight_map"][name], "pt") as f:
        assert f.get_slice(name)[:2].abs().max() == 0


def test_shape_checkpoint_loads_in_transformers_without_missing_keys(tmp_path, demo_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = Arch(layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2, head_dim=16, vocab=4096)
    shape = sweep.build_shape("tiny", tmp_path, arch)
    model, info = AutoModelForCausalLM.from_pretrained(shape, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.parameters()) == param_count(arch)
    emb = model.get_input_embeddings().weight
    rows = sweep.used_rows(demo_model_path)
    assert emb[:rows].abs().amax(dim=1).min() > 0  # every token the tokenizer makes has a trained row
    assert emb[rows:].abs().max() == 0
    assert AutoTokenizer.from_pretrained(shape).chat_template
    assert sweep.build_shape("tiny", tmp_path, arch) == shape  # cached


@pytest.mark.parametrize("seq_len", [128, 1024])
def test_synthetic_rows_are_about_seq_len_tokens(tmp_path, demo_model_path, seq_len):
    from transformers import AutoTokenizer

    from core.data.mixdir import read_mix_dir
    from core.data.render import render_batch

    mix, counts = sweep.build_mix(seq_len, tmp_path, demo_model_path, rows=4)
    train, _, manifest = read_mix_dir(mix)
    assert len(train) == 4 and manifest["max_seq_len"] == seq_len
    rendered = render_batch(train, AutoTokenizer.from_pretrained(demo_model_path))
    for r, n in zip(rendered, counts):
        assert r.n_tokens == n
        assert seq_len - sweep.ROW_MARGIN - 4 <= n <= seq_len - sweep.ROW_MARGIN
        assert r.n_trained > n - 40  # the reply is the row, apart from the prompt and headers


def test_grid_covers_the_required_shapes():
    full = sweep.grid()
    quick = sweep.grid("quick")
    extended = sweep.grid("extended")
    assert set(quick) < set(full) < set(extended)
    unsloth = [p for p in full if p.backend == "auto"]
    combos = {(p.model, p.method) for p in unsloth}
    for key in ("qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-14b"):
        assert {(key, "lora"), (key, "qlora")} <= combos
    assert ("qwen3-32b", "qlora") in combos and ("qwen3-32b", "lora") not in combos
    assert {p.seq_len for p in unsloth} == {512, 2048, 4096}
    assert {p.micro_batch for p in unsloth} == {1, 2}
    assert len(set(extended)) == len(extended)
    assert any(p.backend == "peft" for p in full)


def test_resume_skips_measured_points_but_retries_failures(tmp_path):
    out = tmp_path / "vram.jsonl"
    p = sweep.Point("qwen3-8b", "qlora", 2048, 2)
    base = {"card": "NVIDIA H100 80GB HBM3", "model": p.model, "method": p.method, "seq_len": p.seq_len,
            "micro_batch": p.micro_batch, "rank": 16, "grad_ckpt": "unsloth", "backend": "unsloth",
            "backend_requested": "auto"}
    sweep.append_line(out, {**base, "status": "ok", "peak_alloc_gib": 7.4})
    sweep.append_line(out, {**base, "seq_len": 4096, "status": "oom"})
    sweep.append_line(out, {**base, "seq_len": 512, "status": "failed"})
    out.open("a").write("not json\n")
    keys = sweep.done_keys(out)
    assert ("NVIDIA H100 80GB HBM3", "qwen3-8b", "qlora", 2048, 2, 16, "unsloth", "auto") in keys
    assert len(keys) == 2  # ok and oom; the failed point is tried again
    assert sweep.point_key({**base, "status": "ok"}) in keys


def test_run_config_is_a_valid_run_config(tmp_path):
    from core.config import RunConfig
    from core.settings import from_dict

    p = sweep.Point("qwen3-8b", "qlora", 2048, 2)
    cfg = from_dict(RunConfig, sweep.run_config(p, tmp_path / "shape", tmp_path / "mix", tmp_path / "runs", "x"))
    assert cfg.model.quant == "nf4" and cfg.train.max_steps == sweep.MAX_STEPS
    assert cfg.train.micro_batch == 2 and cfg.train.max_seq_len == 2048 and cfg.lora.r == 16


@pytest.mark.slow
def test_smoke_point_trains_through_the_cli_and_resumes(tmp_path):
    out = tmp_path / "smoke.jsonl"
    assert sweep.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["status"] == "ok", line.get("log_tail")
    assert line["card"] == "cpu" and line["backend"] == "peft" and line["steps"] == sweep.MAX_STEPS
    assert line["row_tokens"] <= line["seq_len"] and line["arch"]["hidden"] == 64
    assert sweep.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1  # measured already: skipped


def test_wide_grid_covers_long_rows_ranks_and_peft_with_held_out_points():
    wide = sweep.grid("wide")
    qlora_long = {(p.model, p.seq_len) for p in wide if p.method == "qlora" and p.seq_len >= 8192}
    for model in ("qwen3-4b", "qwen3-8b", "qwen3-14b"):
        assert {s for m, s in qlora_long if m == model} >= {8192, 16384, 32768} or model != "qwen3-4b"
    assert {s for _, s in qlora_long} == {8192, 16384, 32768}
    assert {m for m, _ in qlora_long} == {"qwen3-4b", "qwen3-8b", "qwen3-14b"}
    assert {64, 128} <= {p.rank for p in wide}
    peft = [p for p in wide if p.backend == "peft"]
    assert len(peft) >= 5 and {p.grad_ckpt for p in peft} == {"on"} and max(p.seq_len for p in peft) >= 16384
    held = [p for p in wide if p.held_out]
    assert 0.2 <= len(held) / len(wide) <= 0.5
    assert {p.backend for p in held} == {"auto", "peft"} and max(p.seq_len for p in held) == 32768
    assert len({p.key("c") for p in wide}) == len(wide)
    assert all(p.key("c") not in {q.key("c") for q in sweep.grid("extended")} for p in wide)


def test_run_config_carries_the_rank_and_the_line_the_held_out_flag(tmp_path):
    from core.config import RunConfig
    from core.settings import from_dict

    p = sweep.Point("qwen3-8b", "qlora", 2048, 2, rank=128, held_out=True)
    cfg = from_dict(RunConfig, sweep.run_config(p, tmp_path / "shape", tmp_path / "mix", tmp_path / "runs", "x"))
    assert cfg.lora.r == 128 and cfg.lora.alpha == 128
    assert p.name.endswith("-r128") and sweep.Point("qwen3-8b", "qlora", 2048, 2).name.endswith("-unsloth")


# --------------------------------------------------------------------------- --stage (dpo, orpo, grpo)
def test_stage_grid_has_every_stage_and_keys_apart_from_sft():
    points = sweep.stage_grid(sweep.STAGE_NAMES)
    assert {p.stage for p in points} == {"dpo", "orpo", "grpo"}
    keys = [p.key("c") for p in points]
    assert len(set(keys)) == len(keys) and not set(keys) & {p.key("c") for p in sweep.grid("extended")}
    for p in points:
        if p.stage == "grpo":
            assert p.seq_len == p.prompt_len + p.completion_len and p.micro_batch % p.num_generations == 0
    grpo = [p for p in points if p.stage == "grpo"]
    assert any(p.kl_beta > 0 for p in grpo) and any(p.kl_beta == 0 for p in grpo)
    assert sweep.Point("qwen3-8b", "qlora", 2048, 2).key("c") == (
        "c", "qwen3-8b", "qlora", 2048, 2, 16, "unsloth", "auto")  # sft keys carry no stage: stored lines match


def test_stage_run_config_is_a_valid_run_config(tmp_path):
    from core.config import RunConfig
    from core.settings import from_dict

    for p in sweep.stage_grid(sweep.STAGE_NAMES):
        cfg = from_dict(RunConfig, sweep.run_config(p, tmp_path / "shape", tmp_path / "mix", tmp_path / "runs", "x"))
        assert cfg.train.stage == p.stage and cfg.train.micro_batch == p.micro_batch and cfg.train.grad_accum == 1
        assert cfg.rl.max_completion_len == p.completion_len and cfg.rl.kl_beta == p.kl_beta
        assert cfg.train.max_seq_len == p.seq_len


def test_a_stage_line_is_estimated_with_the_same_phases(tmp_path):
    from core.hardware.estimate import estimate_setup, point_setup

    p = next(q for q in sweep.stage_grid(("grpo",)) if q.kl_beta > 0)
    line = {"card": "c", "model": p.model, "method": p.method, "seq_len": p.seq_len, "micro_batch": p.micro_batch,
            "rank": p.rank, "grad_ckpt": p.grad_ckpt, "backend": "unsloth", "backend_requested": p.backend,
            "stage": p.stage, "rl": p.rl(), "generation_batch": p.micro_batch, "status": "ok"}
    assert sweep.point_key(line) == p.key("c")
    arch, setup = point_setup(line)
    assert setup.stage == "grpo" and setup.kl and setup.completion_len == p.completion_len
    assert set(estimate_setup(arch, setup).phases) == {"step", "generation", "reference"}
    out = tmp_path / "vram.jsonl"
    sweep.append_line(out, {**line, "status": "ok"})
    assert p.key("c") in sweep.done_keys(out)


@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_stage_mix_rows_follow_the_data_contract(tmp_path, stage):
    from transformers import AutoTokenizer

    from core.demo import ensure_demo_model

    point, _ = sweep.smoke_point(stage)
    mix, counts = sweep.build_stage_mix(point, tmp_path, ensure_demo_model(), rows=3)
    manifest = json.loads((mix / "manifest.json").read_text())
    rows = [json.loads(x) for x in (mix / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and manifest["kind"] == ("prompt" if stage == "grpo" else "preference")
    tok = AutoTokenizer.from_pretrained(str(ensure_demo_model()))
    for row, n in zip(rows, counts):
        conv = row["conversation"]
        if stage == "grpo":
            assert [m["role"] for m in conv["messages"]] == ["user"] and conv["meta"]["expected_answer"]
            assert point.prompt_len - sweep.ROW_MARGIN - 8 <= n <= point.prompt_len - sweep.ROW_MARGIN
        else:
            assert conv["messages"][-1]["role"] == "assistant" and conv["rejected"]["role"] == "assistant"
            assert conv["rejected"]["content"] != conv["messages"][-1]["content"]
            assert n <= point.seq_len and len(tok(conv["rejected"]["content"])["input_ids"]) < point.seq_len
    assert sweep.build_stage_mix(point, tmp_path, ensure_demo_model(), rows=3)[1] == counts  # cached


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_stage_smoke_point_trains_through_the_cli(tmp_path, stage):
    import importlib.util

    if importlib.util.find_spec("core.train.stages") is None:
        pytest.skip("the dpo / orpo / grpo trainers (core.train.stages) are not in this checkout")
    out = tmp_path / "smoke.jsonl"
    assert sweep.main(["--smoke", "--stage", stage, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    line = json.loads(out.read_text().splitlines()[0])
    assert line["status"] == "ok", line.get("log_tail")
    assert line["stage"] == stage and line["steps"] == sweep.MAX_STEPS and line["rl"]


# ------------------------------------------------------------------------ --strategy (several GPUs)
def test_multi_card_points_carry_the_strategy_and_are_estimated_per_card(tmp_path):
    from core.config import RunConfig
    from core.hardware.estimate import estimate_setup, estimate_training, point_setup
    from core.settings import from_dict

    points = sweep.multi_grid("fsdp", 4) + sweep.multi_grid("ddp", 2)
    keys = [p.key("c") for p in points]
    assert len(set(keys)) == len(keys) and not set(keys) & {p.key("c") for p in sweep.grid("extended")}
    p = next(q for q in points if q.model == "qwen3-32b" and q.method == "lora")
    assert p.name.endswith("-fsdp4")
    cfg = from_dict(RunConfig, sweep.run_config(p, tmp_path / "shape", tmp_path / "mix", tmp_path / "runs", "x"))
    assert cfg.train.strategy == "fsdp" and cfg.train.gpus == "4" and cfg.train.stage == "sft"
    line = {"card": "c", "model": p.model, "method": p.method, "seq_len": p.seq_len, "micro_batch": p.micro_batch,
            "rank": p.rank, "grad_ckpt": p.grad_ckpt, "backend": "peft", "backend_requested": p.backend,
            "strategy": p.strategy, "gpus": p.gpus, "status": "ok"}
    assert sweep.point_key(line) == p.key("c")
    arch, setup = point_setup(line)
    want = estimate_training(p.model, method=p.method, seq_len=p.seq_len, micro_batch=p.micro_batch,
                             strategy="fsdp", gpus=4)
    assert estimate_setup(arch, setup).total_gib == want.total_gib


@pytest.mark.slow
def test_multi_card_smoke_point_runs_two_cpu_processes(tmp_path):
    out = tmp_path / "smoke.jsonl"
    assert sweep.main(["--smoke", "--strategy", "ddp", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    line = json.loads(out.read_text().splitlines()[0])
    assert line["status"] == "ok", line.get("log_tail")
    assert line["strategy"] == "ddp" and line["gpus"] == 2 and line["world_size"] == 2
    assert line["steps"] == sweep.MAX_STEPS
