"""Local model folders: checks on good and damaged copies of the demo model, and the list."""

from __future__ import annotations

import json
import shutil

import pytest

from core.models import InvalidModelFolder, ModelError
from core.models.local import add_local_model, check_model_dir, list_local_models, read_registry, remove_local_model
from core.models.resolve import MARKER, repo_dir
from tests.models.conftest import sharded_copy


def only_problem(check) -> str:
    assert len(check.problems) == 1, check.problems
    return check.problems[0]


def test_demo_copy_is_a_good_qwen3(model_copy):
    check = check_model_dir(model_copy())
    assert check.ok, check.problems
    assert (check.model_type, check.architecture, check.layers, check.hidden) == ("qwen3", "Qwen3ForCausalLM", 2, 64)
    assert check.weights == "safetensors" and check.shards == 1
    assert not check.quantized_4bit
    assert 0 < check.params < 1_000_000


def test_sharded_copy_is_good_and_a_missing_shard_is_named(model_copy, tmp_path, demo_model_path):
    folder = sharded_copy(demo_model_path, tmp_path / "sharded")
    check = check_model_dir(folder)
    assert check.ok and check.shards == 3, check.problems
    (folder / "model-00002-of-00003.safetensors").unlink()
    problem = only_problem(check_model_dir(folder))
    assert "model-00002-of-00003.safetensors" in problem
    assert "model.safetensors.index.json" in problem and "2 of 3 shards" in problem


def test_missing_weights(model_copy):
    folder = model_copy()
    (folder / "model.safetensors").unlink()
    assert "no weights" in only_problem(check_model_dir(folder))


def test_truncated_weights(model_copy):
    folder = model_copy()
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problem = only_problem(check_model_dir(folder))
    assert "model.safetensors is truncated" in problem


def test_missing_tokenizer(model_copy):
    folder = model_copy()
    (folder / "tokenizer.json").unlink()
    assert "tokenizer files are missing" in only_problem(check_model_dir(folder))


def test_corrupt_config(model_copy):
    folder = model_copy()
    (folder / "config.json").write_text('{"model_type": "qwen3",\n  "hidden_size": 64,,}', encoding="utf-8")
    problem = only_problem(check_model_dir(folder))
    assert "config.json is not valid JSON" in problem and "line 2" in problem


def test_config_that_is_not_utf8_or_not_an_object_is_named(model_copy):
    folder = model_copy()
    (folder / "config.json").write_bytes(b'{"model_type": "qwen3\xff"}')
    assert "config.json is not UTF-8 text" in only_problem(check_model_dir(folder))
    (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    assert "config.json does not hold a JSON object" in only_problem(check_model_dir(folder))


def test_missing_config(model_copy):
    folder = model_copy()
    (folder / "config.json").unlink()
    assert "config.json is missing" in only_problem(check_model_dir(folder))


@pytest.mark.parametrize("model_type,expected", [
    ("llama", "model_type 'llama'"),
    ("qwen2", "Qwen2 / Qwen2.5, not Qwen3"),
    ("qwen3_vl", "vision-language"),
])
def test_wrong_model_type(model_copy, model_type, expected):
    folder = model_copy()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    problem = only_problem(check_model_dir(folder))
    assert "not a Qwen3 model" in problem and expected in problem


def test_not_a_causal_lm(model_copy):
    folder = model_copy()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = ["Qwen3ForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert "not a causal LM" in only_problem(check_model_dir(folder))


def test_several_problems_are_all_reported(model_copy):
    folder = model_copy()
    (folder / "tokenizer.json").unlink()
    (folder / "model.safetensors").unlink()
    problems = " | ".join(check_model_dir(folder).problems)
    assert "no weights" in problems and "tokenizer" in problems


def test_adapter_folder_is_explained(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-8B"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    assert any("LoRA adapter (base model: Qwen/Qwen3-8B)" in p for p in check_model_dir(folder).problems)


@pytest.mark.parametrize("skip,expected", [
    (None, "bnb-4bit"),
    (["lm_head", "model.layers.1.mlp.down_proj"], "unsloth-dynamic-4bit"),
])
def test_4bit_checkpoints_are_recognised(model_copy, skip, expected):
    folder = model_copy()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4", "llm_int8_skip_modules": skip}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    check = check_model_dir(folder)
    assert check.ok and check.quantized_4bit and check.quant_method == expected


def test_other_quantization_is_refused(model_copy):
    folder = model_copy()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "fp8"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert "quantized with fp8" in only_problem(check_model_dir(folder))


def test_list_has_demo_downloads_added_folders_and_hub_cache(isolated, model_copy, demo_model_path):
    done = repo_dir("unsloth/Qwen3-8B-unsloth-bnb-4bit", "hf")
    shutil.copytree(demo_model_path, done)
    (done / MARKER).write_text("{}", encoding="utf-8")
    partial = repo_dir("Qwen/Qwen3-8B", "modelscope")
    shutil.copytree(demo_model_path, partial)
    (partial / "model.safetensors").unlink()
    added = model_copy("my-finetune-base")
    add_local_model(added)
    snap = isolated.tmp / "hf-home" / "hub" / "models--Qwen--Qwen3-4B" / "snapshots" / "abc"
    shutil.copytree(demo_model_path, snap)
    unrelated = isolated.tmp / "hf-home" / "hub" / "models--bert--base" / "snapshots" / "abc"
    shutil.copytree(demo_model_path, unrelated)

    models = {m.label if m.source != "demo" else "demo": m for m in list_local_models()}
    assert set(models) == {"demo", "unsloth/Qwen3-8B-unsloth-bnb-4bit", "Qwen/Qwen3-8B", "my-finetune-base",
                           "Qwen/Qwen3-4B"}
    assert models["demo"].ok and models["demo"].check.model_type == "qwen3"
    assert models["unsloth/Qwen3-8B-unsloth-bnb-4bit"].ok
    assert models["unsloth/Qwen3-8B-unsloth-bnb-4bit"].size_bytes > 400_000
    assert not models["Qwen/Qwen3-8B"].complete and not models["Qwen/Qwen3-8B"].ok
    assert models["my-finetune-base"].source == "added" and models["my-finetune-base"].ok
    assert models["Qwen/Qwen3-4B"].source == "hf-cache"


def test_add_refuses_a_broken_folder_unless_forced(model_copy, isolated):
    folder = model_copy()
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InvalidModelFolder) as err:
        add_local_model(folder)
    assert "tokenizer" in str(err.value)
    assert read_registry() == []
    add_local_model(folder, force=True)
    assert [f["path"] for f in read_registry()] == [str(folder.resolve())]
    entry = next(m for m in list_local_models() if m.source == "added")
    assert not entry.ok
    assert remove_local_model(folder) and read_registry() == []
    assert folder.is_dir()  # forgetting a folder never deletes it


def test_corrupt_registry_is_a_clear_error(isolated):
    (isolated.cache / "local_models.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError) as err:
        list_local_models()
    assert "local_models.json" in str(err.value) and "not valid JSON" in str(err.value)
    (isolated.cache / "local_models.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ModelError, match=r"local_models\.json.*expected a JSON object"):
        read_registry()


def test_a_damaged_download_marker_lists_the_folder_as_unfinished(isolated, demo_model_path):
    folder = repo_dir("unsloth/Qwen3-8B-unsloth-bnb-4bit", "hf")
    shutil.copytree(demo_model_path, folder)
    (folder / MARKER).write_text('{"files": [', encoding="utf-8")
    entry = next(m for m in list_local_models(include_hub_caches=False) if m.source == "download")
    assert not entry.complete
    (folder / MARKER).write_text("{}", encoding="utf-8")
    entry = next(m for m in list_local_models(include_hub_caches=False) if m.source == "download")
    assert entry.complete
