"""What can be loaded: a run, a checkpoint, an adapter, a merged model folder, a model name."""

from __future__ import annotations

import json
import shutil

import pytest

from core.chat.loader import LoadError, ModelCache, list_targets, load_engine, resolve_target
from core.chat.sampling import resolve
from core.config import ChatConfig
from tests.chat.fixtures import make_run

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = resolve(greedy=True, thinking=False, max_new_tokens=16)


def test_resolve_run_checkpoint_and_adapter(fake_run, demo_model_path, random_adapter):
    spec = resolve_target(str(fake_run))
    assert (spec.kind, spec.label, spec.adapter) == ("run", fake_run.name, str(fake_run / "adapter"))
    assert spec.base == "demo" and spec.base_path == str(demo_model_path)
    ck = fake_run / "checkpoints" / "checkpoint-2"
    spec = resolve_target(str(ck))
    assert (spec.kind, spec.adapter, spec.run_dir) == ("checkpoint", str(ck), str(fake_run))
    # a loose adapter names its base in adapter_config.json
    spec = resolve_target(str(random_adapter))
    assert spec.kind == "adapter" and spec.base == str(demo_model_path)
    # a run found by name under runs_dir
    assert resolve_target(fake_run.name, runs_dir=fake_run.parent).kind == "run"


def test_resolve_names_and_errors(tmp_path):
    assert resolve_target("demo").kind == "model"
    assert resolve_target("Qwen/Qwen3-0.6B").kind == "model"
    merged = resolve_target("Qwen/Qwen3-0.6B", ChatConfig(base_model="demo"))
    assert (merged.kind, merged.tuned, merged.base) == ("merged", "Qwen/Qwen3-0.6B", "demo")
    with pytest.raises(LoadError, match="choose a run"):
        resolve_target("  ")
    with pytest.raises(LoadError, match="no such folder"):
        resolve_target(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="not a run"):
        resolve_target(str(tmp_path / "empty"))


def test_unfinished_run_uses_newest_checkpoint(demo_model_path, random_adapter, small_mix, tmp_path):
    run = make_run(tmp_path, "going", demo_model_path, random_adapter, small_mix, finished=False,
                   checkpoint_steps=(2, 10, 4))
    spec = resolve_target(str(run))
    assert spec.adapter.endswith("checkpoint-10") and "newest checkpoint" in spec.notes[0]
    empty = make_run(tmp_path, "fresh", demo_model_path, random_adapter, small_mix, finished=False,
                     checkpoint_steps=())
    with pytest.raises(LoadError, match="no adapter yet"):
        resolve_target(str(empty))
    rows = list_targets(tmp_path)
    labels = [r["label"] for r in rows]
    assert "going (in progress: checkpoint-10)" in labels and "going / checkpoint-4" in labels
    assert not any(r["run"] == "fresh" for r in rows)


def test_load_run_and_checkpoint(fake_run, plain_engine):
    engine = load_engine(str(fake_run), ChatConfig(device="cpu"))
    assert engine.panes == ("base", "tuned") and engine.has_adapter
    assert engine.info["device"] == "cpu" and engine.info["kind"] == "run"
    ids = engine.encode(engine.prompt(MSGS, thinking=False))
    assert engine.generate_ids("base", ids, GREEDY) == plain_engine.generate_ids("base", ids, GREEDY)
    ck = load_engine(str(fake_run / "checkpoints" / "checkpoint-2"), ChatConfig(device="cpu"))
    assert ck.generate_ids("tuned", ids, GREEDY) == engine.generate_ids("tuned", ids, GREEDY)


@pytest.fixture(scope="module")
def merged_dir(demo_model_path, random_adapter, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("merged") / "merged16"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_path), random_adapter)
    model.merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(demo_model_path).save_pretrained(out)
    return out


def test_merged_model_beside_its_base(merged_dir, demo_model_path, fake_run):
    engine = load_engine(str(merged_dir), ChatConfig(device="cpu", base_model=str(demo_model_path)))
    assert engine.panes == ("base", "tuned") and engine.tuned_model is not None and not engine.has_adapter
    adapter_engine = load_engine(str(fake_run), ChatConfig(device="cpu"))
    ids = engine.encode(engine.prompt(MSGS, thinking=False))
    # the merged model is the adapter's fine-tune: same greedy tokens
    assert engine.generate_ids("tuned", ids, GREEDY) == adapter_engine.generate_ids("tuned", ids, GREEDY)
    assert engine.generate_ids("base", ids, GREEDY) == adapter_engine.generate_ids("base", ids, GREEDY)


def test_merged_model_refused_when_it_does_not_fit(merged_dir, demo_model_path, monkeypatch):
    import core.chat.loader as loader

    monkeypatch.setattr(loader, "_gib_free", lambda device: 0.0)
    with pytest.raises(LoadError, match="Load the run's adapter instead"):
        load_engine(str(merged_dir), ChatConfig(device="cpu", base_model=str(demo_model_path)))


def test_model_folder_alone_and_export_marker(merged_dir, demo_model_path, tmp_path):
    engine = load_engine(str(merged_dir), ChatConfig(device="cpu"))
    assert engine.panes == ("base",) and "base_model" in engine.info["notes"][0]
    marked = tmp_path / "export"
    shutil.copytree(merged_dir, marked)
    (marked / "qwentune_export.json").write_text(json.dumps({"base_model": str(demo_model_path)}))
    spec = resolve_target(str(marked))
    assert spec.kind == "merged" and spec.base == str(demo_model_path)


def test_prequantized_checkpoint_on_cpu_gives_a_clear_error(merged_dir, tmp_path):
    q = tmp_path / "q4"
    shutil.copytree(merged_dir, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="needs an NVIDIA GPU"):
        load_engine(str(q), ChatConfig(device="cpu"))


def test_model_cache_keeps_one_engine(fake_run):
    cache = ModelCache()
    calls = []

    def loader(spec, cfg, runs_dir=None):
        calls.append(spec.target)
        return object()

    cfg = ChatConfig(device="cpu")
    a = resolve_target(str(fake_run))
    b = resolve_target(str(fake_run / "checkpoints" / "checkpoint-2"))
    e1 = cache.load(a, cfg, loader=loader)
    assert cache.load(a, cfg, loader=loader) is e1 and len(calls) == 1
    assert cache.get(ModelCache.key(a, cfg)) is e1
    e2 = cache.load(b, cfg, loader=loader)
    assert e2 is not e1 and cache.get(ModelCache.key(a, cfg)) is None  # the old one was dropped
    cache.unload()
    assert cache.current is None
