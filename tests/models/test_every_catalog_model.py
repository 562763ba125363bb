"""The real user's path: every catalog key x method x hub, and every shipped training preset, goes
through the trainer's resolver to a finished download (hub clients faked, no network).

The keys with a dot (qwen3-0.6b, qwen3-1.7b) are the ones a file-suffix test once read as missing
folders, so each key is also resolved from a working folder where no such folder exists, and a real
folder of that name is shown to win over the catalog (the order is folder -> catalog -> hub id).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.choices import HUBS, METHODS
from core.config import ModelConfig
from core.hardware.catalog import load_catalog
from core.models import UnknownModel, repo_dir, resolve_model
from core.models.paths import MARKER
from core.models.resolve import checkpoint_kind
from core.presets import load_preset
from core.train.backends import resolve_model_path
from tests.models.conftest import FakeClients

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
PRESETS = sorted((ROOT / "presets" / "train").glob("*.yaml"))


@pytest.fixture
def every_repo(monkeypatch, demo_model_path):
    """Fake hub clients that serve the demo model under every repository id the catalog names."""
    repos = {}
    for entry in CATALOG.values():
        for hub in HUBS:
            for repo in (entry.hf if hub == "hf" else entry.modelscope).values():
                if repo:
                    repos[(hub, repo)] = demo_model_path
    return FakeClients(monkeypatch, repos)


@pytest.mark.parametrize("hub", HUBS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", list(CATALOG))
def test_every_catalog_key_method_and_hub_reaches_the_download(key, method, hub, every_repo, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder named like the key here
    entry = CATALOG[key]
    kind = checkpoint_kind(entry, method, "auto")
    repo = entry.repo(hub, kind)
    cfg = ModelConfig(name_or_path=key, method=method, quant="auto", hub=hub)
    path = resolve_model_path(cfg)
    assert path == repo_dir(repo, hub)
    assert (path / MARKER).is_file() and (path / "config.json").is_file()
    downloads = [c for c in every_repo.calls if c[1] in ("snapshot_download", "download_repo")]
    assert [(c[0], c[2]["repo_id"]) for c in downloads] == [(hub, repo)]
    # The second time it is on disk: no hub call at all.
    every_repo.calls.clear()
    assert resolve_model_path(cfg, download=False) == path
    assert every_repo.calls == []


@pytest.mark.parametrize("key", ["qwen3-0.6b", "qwen3-1.7b", "Qwen3-1.7B"])
def test_a_dotted_key_is_a_catalog_name_but_an_existing_folder_wins(key, every_repo, tmp_path, monkeypatch,
                                                                      demo_model_path):
    import shutil

    monkeypatch.chdir(tmp_path)
    got = resolve_model(key, method="lora", hub="hf")
    assert Path(got).parent.parent.name == "hf" and Path(got).name.lower() == key.lower()
    local = tmp_path / key
    shutil.copytree(demo_model_path, local)
    assert resolve_model(key, method="lora", hub="hf") == str(local.resolve())


def test_hub_id_outside_the_catalog_and_a_clear_error(every_repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve_model("Qwen/Qwen3-8B", method="lora", hub="modelscope")
    assert path == str(repo_dir("Qwen/Qwen3-8B", "modelscope"))
    with pytest.raises(UnknownModel) as err:
        resolve_model_path(ModelConfig(name_or_path="qwen3-9b"))
    assert err.value.where == "model.name_or_path" and "qwen3-8b" in str(err.value)
    with pytest.raises(UnknownModel) as err:
        resolve_model_path(ModelConfig(name_or_path=os.path.join(str(tmp_path), "no-such-model")))
    assert "not found" in str(err.value)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_training_preset_resolves_its_model(preset, every_repo, tmp_path, monkeypatch, demo_model_path):
    monkeypatch.chdir(tmp_path)
    values = load_preset(preset)  # validated as the GUI and `core train` read it
    model = ModelConfig(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.")})
    path = resolve_model_path(model)
    if model.name_or_path == "demo":
        assert path.resolve() == demo_model_path.resolve()
        return
    entry = CATALOG[model.name_or_path.lower()]
    repo = entry.repo(model.hub, checkpoint_kind(entry, model.method, model.quant))
    assert path == repo_dir(repo, model.hub)


@pytest.mark.parametrize("key", list(CATALOG))
def test_chat_and_serving_resolve_names_as_training_does(key, every_repo, tmp_path, monkeypatch, demo_model_path):
    import shutil

    from core.chat.loader import _local_model_path
    from core.eval.serving import base_for_serving

    monkeypatch.chdir(tmp_path)
    entry = CATALOG[key]
    assert _local_model_path(key, method="lora", quant="none") == str(repo_dir(entry.repo("hf", "original"), "hf"))
    assert base_for_serving(key) == entry.repo("hf", "original")  # vLLM loads the 16-bit release
    shutil.copytree(demo_model_path, tmp_path / key)
    assert base_for_serving(key) == str((tmp_path / key).resolve())  # an existing folder wins
    assert base_for_serving("demo", str(demo_model_path)) == str(demo_model_path)


@pytest.mark.slow
def test_every_catalog_key_and_method_downloads_with_the_real_client(demo_model_path, isolated, tmp_path):
    """The real huggingface_hub client against the local fake hub (tests/models/fake_hub.py), in a
    subprocess as `python -m core train` would run it: each key x method reaches a checked folder."""
    import json
    import subprocess
    import sys

    from tests.models.fake_hub import FakeHub

    repos = {entry.repo("hf", checkpoint_kind(entry, method, "auto")): demo_model_path
             for entry in CATALOG.values() for method in METHODS}
    script = ("import json, sys\n"
              "from core.config import ModelConfig\n"
              "from core.train.backends import resolve_model_path\n"
              "out = {}\n"
              "for key, method in json.loads(sys.argv[1]):\n"
              "    out[f'{key}:{method}'] = str(resolve_model_path(ModelConfig(name_or_path=key, method=method)))\n"
              "print(json.dumps(out))\n")
    pairs = [(key, method) for key in CATALOG for method in METHODS]
    with FakeHub(repos) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, PYTHONPATH=os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", script, json.dumps(pairs)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    for key, method in pairs:
        entry = CATALOG[key]
        repo = entry.repo("hf", checkpoint_kind(entry, method, "auto"))
        assert paths[f"{key}:{method}"] == str(repo_dir(repo, "hf")), (key, method)
        assert (Path(paths[f"{key}:{method}"]) / MARKER).is_file()
    assert any("/resolve/" in r for r in hub.requests)
