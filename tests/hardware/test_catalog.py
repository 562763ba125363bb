"""presets/models.yaml: the shapes are Qwen3's, the ids are well-formed, bad files are named."""

from __future__ import annotations

import json

import pytest

from core.config import ALL_LINEAR
from core.hardware.catalog import Arch, get_model, load_catalog, lora_param_count, param_count, param_counts
from core.settings import ConfigError

EXPECTED = {  # layers, hidden, intermediate, heads, kv_heads, tied, experts, active, moe_intermediate
    "qwen3-0.6b": (28, 1024, 3072, 16, 8, True, 0, 0, 0),
    "qwen3-1.7b": (28, 2048, 6144, 16, 8, True, 0, 0, 0),
    "qwen3-4b": (36, 2560, 9728, 32, 8, True, 0, 0, 0),
    "qwen3-8b": (36, 4096, 12288, 32, 8, False, 0, 0, 0),
    "qwen3-14b": (40, 5120, 17408, 40, 8, False, 0, 0, 0),
    "qwen3-32b": (64, 5120, 25600, 64, 8, False, 0, 0, 0),
    "qwen3-30b-a3b": (48, 2048, 6144, 32, 4, False, 128, 8, 768),
    "qwen3-235b-a22b": (94, 4096, 12288, 64, 4, False, 128, 8, 1536),
}
# Published totals (billions) and non-embedding parameters of the Qwen3 model cards.
PUBLISHED = {"qwen3-0.6b": (0.6, 0.44), "qwen3-1.7b": (1.7, 1.4), "qwen3-4b": (4.0, 3.6),
             "qwen3-8b": (8.2, 6.95), "qwen3-14b": (14.8, 13.2), "qwen3-32b": (32.8, 31.2),
             "qwen3-30b-a3b": (30.5, 29.9), "qwen3-235b-a22b": (235, 234)}


def test_catalog_has_the_qwen3_family_with_real_shapes():
    cat = load_catalog()
    assert list(cat) == list(EXPECTED)
    for key, (layers, hidden, inter, heads, kv, tied, experts, active, moe_i) in EXPECTED.items():
        a = cat[key].arch
        assert (a.layers, a.hidden, a.intermediate, a.heads, a.kv_heads, a.tied_embeddings) == \
            (layers, hidden, inter, heads, kv, tied), key
        assert (a.experts, a.active_experts, a.moe_intermediate) == (experts, active, moe_i), key
        assert a.vocab == 151936 and a.head_dim == 128
        assert cat[key].is_moe == (experts > 0)


def test_parameter_counts_match_the_model_cards():
    for key, (total_b, non_embed_b) in PUBLISHED.items():
        counts = param_counts(get_model(key).arch)
        assert counts.total / 1e9 == pytest.approx(total_b, rel=0.03), key
        assert (counts.linear + counts.other) / 1e9 == pytest.approx(non_embed_b, rel=0.03), key


def test_hub_ids():
    for entry in load_catalog().values():
        for hub in ("hf", "modelscope"):
            assert entry.repo(hub, "original").startswith("Qwen/Qwen3-")
            assert entry.repo(hub, "bnb4") == f"unsloth/{entry.hf['original'].split('/')[1]}-bnb-4bit"
            if entry.is_moe:
                assert entry.repo(hub, "dynamic4") is None  # MoE: only plain 4-bit
            else:
                assert entry.repo(hub, "dynamic4") == f"unsloth/{entry.display}-unsloth-bnb-4bit"
    assert get_model("qwen3-8b").hf["dynamic4"] == "unsloth/Qwen3-8B-unsloth-bnb-4bit"
    assert get_model("Qwen3-8B").key == "qwen3-8b"
    with pytest.raises(ValueError):
        get_model("qwen3-8b").repo("github")


def test_unknown_model_is_named():
    with pytest.raises(ConfigError, match="unknown model 'qwen3-9b'.*qwen3-8b"):
        get_model("qwen3-9b")


def _write(tmp_path, text):
    p = tmp_path / "models.yaml"
    p.write_text(text, encoding="utf-8")
    return p




def _entry_text(**changes) -> str:
    import yaml

    from tests.conftest import ROOT

    data = yaml.safe_load((ROOT / "presets" / "models.yaml").read_text(encoding="utf-8"))
    entry = data["qwen3-8b"]
    for dotted, value in changes.items():
        node = entry
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return yaml.safe_dump({"qwen3-8b": entry}, sort_keys=False)


@pytest.mark.parametrize("changes, where, message", [
    ({"arch__kv_heads": 5}, "qwen3-8b.arch.kv_heads", "multiple of kv_heads"),
    ({"arch__layers": "36"}, "qwen3-8b.arch.layers", "whole number"),
    ({"params_b": 80}, "qwen3-8b.params_b", "disagrees"),
    ({"hf__bnb4": "not a repo"}, "qwen3-8b.hf.bnb4", "owner/name"),
    ({"arch__experts": 128, "arch__active_experts": 8, "arch__moe_intermediate": 768, "params_b": 30.3},
     "qwen3-8b", ""),
])
def test_validation_names_file_line_and_field(tmp_path, changes, where, message):
    path = _write(tmp_path, _entry_text(**changes))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    err = info.value
    assert err.where.startswith(where)
    assert err.source.startswith(f"{path}:")  # a line number follows
    assert message in str(err)


def test_moe_with_dynamic4_is_rejected(tmp_path):
    import yaml

    from tests.conftest import ROOT

    data = yaml.safe_load((ROOT / "presets" / "models.yaml").read_text(encoding="utf-8"))
    entry = data["qwen3-30b-a3b"]
    entry["hf"]["dynamic4"] = "unsloth/Qwen3-30B-A3B-unsloth-bnb-4bit"
    path = _write(tmp_path, yaml.safe_dump({"qwen3-30b-a3b": entry}))
    with pytest.raises(ConfigError, match="no Unsloth dynamic 4-bit"):
        load_catalog(path)


def test_broken_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "qwen3-8b:\n  display: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_arch_from_hf_config_dense_and_moe():
    dense = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 4096, "intermediate_size": 12288,
             "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
             "vocab_size": 151936, "tie_word_embeddings": False}
    assert Arch.from_hf_config(dense) == get_model("qwen3-8b").arch
    moe = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 6144,
           "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
           "vocab_size": 151936, "tie_word_embeddings": False, "num_experts": 128, "num_experts_per_tok": 8,
           "moe_intermediate_size": 768, "decoder_sparse_step": 1}
    assert Arch.from_hf_config(moe) == get_model("qwen3-30b-a3b").arch
    with pytest.raises(ConfigError, match="hidden_size"):
        Arch.from_hf_config({"num_hidden_layers": 2})


def test_arch_from_the_demo_models_config_counts_its_real_parameters(demo_model_path):
    from safetensors import safe_open

    arch = Arch.from_hf_config(json.loads((demo_model_path / "config.json").read_text()))
    with safe_open(demo_model_path / "model.safetensors", "pt") as f:
        stored = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)
    assert param_count(arch) == stored


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.slow
@pytest.mark.parametrize("key", ["qwen3-0.6b", "qwen3-8b", "qwen3-30b-a3b"])
def test_counts_agree_with_transformers_and_peft(key):
    """Build the real architecture on the meta device (no memory) and count its parameters, and
    the trainable parameters PEFT adds for all-linear LoRA."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    a = get_model(key).arch
    kw = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
              num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
              head_dim=a.head_dim, tie_word_embeddings=a.tied_embeddings)
    with torch.device("meta"):
        if a.is_moe:
            model = Qwen3MoeForCausalLM(Qwen3MoeConfig(num_experts=a.experts, num_experts_per_tok=a.active_experts,
                                                       moe_intermediate_size=a.moe_intermediate, **kw))
        else:
            model = Qwen3ForCausalLM(Qwen3Config(**kw))
    assert sum(p.numel() for p in model.parameters()) == param_count(a)
    if not a.is_moe:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=ALL_LINEAR))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert trainable == lora_param_count(a, 16, ALL_LINEAR)
