"""Catalog key + method + quant + hub -> repository id, and name_or_path -> local folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.hardware.catalog import load_catalog
from core.models import (
    CheckpointMissing,
    InvalidModelFolder,
    NotDownloaded,
    UnknownModel,
    local_path_for,
    models_dir,
    parse_ref,
    repo_dir,
    repo_id_for,
    resolve_model,
)
from core.models.resolve import MARKER

CATALOG = load_catalog()
METHODS = ("lora", "qlora")
QUANTS = ("auto", "dynamic4", "bnb4", "nf4", "none")
HUBS = ("hf", "modelscope")


def expected_kind(entry, method: str, quant: str) -> str:
    if method == "lora" or quant in ("nf4", "none"):
        return "original"
    if quant == "auto":
        return "bnb4" if entry.is_moe else "dynamic4"
    return quant


@pytest.mark.parametrize("key", list(CATALOG))
@pytest.mark.parametrize("hub", HUBS)
def test_every_catalog_entry_method_quant_and_hub(key, hub):
    entry = CATALOG[key]
    for method in METHODS:
        for quant in QUANTS:
            kind = expected_kind(entry, method, quant)
            repo = (entry.hf if hub == "hf" else entry.modelscope)[kind]
            if repo is None:
                with pytest.raises(CheckpointMissing) as err:
                    repo_id_for(key, method, quant, hub)
                assert key in str(err.value)
                continue
            got = repo_id_for(key, method, quant, hub)
            assert got == repo, (key, method, quant, hub)
            assert got.count("/") == 1


def test_known_ids_and_the_usual_choices():
    assert repo_id_for("qwen3-8b", "qlora", "auto", "hf") == "unsloth/Qwen3-8B-unsloth-bnb-4bit"
    assert repo_id_for("qwen3-8b", "qlora", "bnb4", "hf") == "unsloth/Qwen3-8B-bnb-4bit"
    assert repo_id_for("qwen3-8b", "qlora", "nf4", "hf") == "Qwen/Qwen3-8B"
    assert repo_id_for("qwen3-8b", "lora", "auto", "modelscope") == "Qwen/Qwen3-8B"
    assert repo_id_for("qwen3-8b", "lora", "dynamic4", "hf") == "Qwen/Qwen3-8B"  # LoRA is 16-bit
    # MoE: no dynamic 4-bit, so auto picks the plain bnb 4-bit checkpoint.
    assert repo_id_for("qwen3-30b-a3b", "qlora", "auto", "hf") == "unsloth/Qwen3-30B-A3B-bnb-4bit"
    assert repo_id_for("Qwen3-30B-A3B", "qlora", "auto", "modelscope") == "unsloth/Qwen3-30B-A3B-bnb-4bit"


def test_moe_dynamic4_is_refused_with_the_alternatives():
    with pytest.raises(CheckpointMissing) as err:
        repo_id_for("qwen3-30b-a3b", "qlora", "dynamic4", "hf")
    assert "mixture-of-experts" in str(err.value)
    assert "bnb4" in err.value.advice and err.value.where == "model.quant"


def test_bad_names_say_what_is_known():
    with pytest.raises(UnknownModel) as err:
        repo_id_for("qwen3-7b", "qlora", "auto", "hf")
    assert "qwen3-8b" in str(err.value)
    with pytest.raises(UnknownModel) as err:
        parse_ref("llama-3")
    assert "catalog" in str(err.value)
    with pytest.raises(UnknownModel) as err:
        parse_ref("/nowhere/model")
    assert "folder not found" in str(err.value)
    with pytest.raises(UnknownModel):
        parse_ref("   ")


def test_parse_ref_kinds(model_copy):
    folder = model_copy()
    assert parse_ref("demo").kind == "demo"
    assert parse_ref(str(folder)).kind == "folder"
    ref = parse_ref("qwen3-4b", hub="modelscope")
    assert (ref.kind, ref.key, ref.repo_id, ref.checkpoint) == ("catalog", "qwen3-4b",
                                                                "unsloth/Qwen3-4B-unsloth-bnb-4bit", "dynamic4")
    ref = parse_ref("Qwen/Qwen3-4B-Instruct-2507")
    assert (ref.kind, ref.repo_id) == ("repo", "Qwen/Qwen3-4B-Instruct-2507")


def test_models_dir_default_env_and_argument(isolated, monkeypatch, tmp_path):
    assert models_dir() == isolated.cache / "models"
    monkeypatch.setenv("QWENTUNE_MODELS_DIR", str(tmp_path / "big-disk"))
    assert models_dir() == tmp_path / "big-disk"
    assert models_dir(tmp_path / "flag") == tmp_path / "flag"
    assert repo_dir("Qwen/Qwen3-8B", "modelscope", tmp_path / "flag") == tmp_path / "flag/modelscope/Qwen/Qwen3-8B"


def test_demo_resolves_to_the_demo_model(demo_model_path):
    assert Path(resolve_model("demo")).resolve() == demo_model_path.resolve()


def test_a_good_folder_resolves_to_itself_and_a_broken_one_is_refused(model_copy):
    good = model_copy("good")
    assert resolve_model(str(good)) == str(good.resolve())
    broken = model_copy("broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(InvalidModelFolder) as err:
        resolve_model(str(broken))
    assert "no weights" in str(err.value)


def _install(src: Path, repo_id: str, hub: str) -> Path:
    dest = repo_dir(repo_id, hub)
    shutil.copytree(src, dest)
    (dest / MARKER).write_text(json.dumps({"repo_id": repo_id, "hub": hub}), encoding="utf-8")
    return dest


def test_catalog_key_uses_the_downloaded_copy_without_network(demo_model_path, monkeypatch):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("must not touch the network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    dest = _install(demo_model_path, "unsloth/Qwen3-0.6B-unsloth-bnb-4bit", "hf")
    assert resolve_model("qwen3-0.6b", method="qlora", hub="hf") == str(dest)
    # The same checkpoint downloaded from ModelScope serves a Hugging Face request too.
    other = _install(demo_model_path, "Qwen/Qwen3-0.6B", "modelscope")
    assert resolve_model("qwen3-0.6b", method="lora", hub="hf") == str(other)
    assert local_path_for("qwen3-0.6b", method="lora", hub="hf") == str(other)


def test_unfinished_download_is_not_used(demo_model_path):
    dest = repo_dir("Qwen/Qwen3-0.6B", "hf")
    shutil.copytree(demo_model_path, dest)  # no marker: the download never finished
    assert local_path_for("qwen3-0.6b", method="lora") is None
    with pytest.raises(NotDownloaded) as err:
        resolve_model("qwen3-0.6b", method="lora", download=False)
    assert "python -m core models get qwen3-0.6b" in err.value.advice


def test_hf_cache_copy_is_reused(demo_model_path, isolated):
    snap = isolated.tmp / "hf-home" / "hub" / "models--Qwen--Qwen3-1.7B" / "snapshots" / "abc123"
    shutil.copytree(demo_model_path, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123", encoding="utf-8")
    assert resolve_model("qwen3-1.7b", method="lora", download=False) == str(snap)


@pytest.mark.parametrize("layout", ["models/Qwen--Qwen3-1.7B/snapshots/master", "hub/models/Qwen/Qwen3-1___7B"])
def test_modelscope_cache_copy_is_reused_and_listed(demo_model_path, isolated, layout):
    from core.models.local import list_local_models

    folder = isolated.tmp / "ms-cache" / layout
    shutil.copytree(demo_model_path, folder)
    assert resolve_model("qwen3-1.7b", method="lora", hub="modelscope", download=False) == str(folder)
    listed = [m for m in list_local_models() if m.source == "modelscope-cache"]
    assert [(m.label, m.path) for m in listed] == [("Qwen/Qwen3-1.7B", str(folder))]
