"""The GUI model picker: builds without network or heavy work, describes the choice, shows progress."""

from __future__ import annotations

import json
import shutil

import pytest

from core.models.download import DownloadProgress
from core.models.resolve import MARKER, repo_dir
from gui.components import model_picker


@pytest.fixture
def ctx(tmp_path):
    from gui.app import AppContext

    return AppContext(runs_dir=tmp_path / "runs", demo=True, lang="en")


@pytest.fixture
def no_network(monkeypatch):
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("the picker must not touch the network")

    monkeypatch.setattr("socket.create_connection", boom)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", boom)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)


def test_build_renders_the_contract_components(ctx, no_network, demo_model_path):
    import gradio as gr

    done = repo_dir("unsloth/Qwen3-8B-unsloth-bnb-4bit", "hf")
    shutil.copytree(demo_model_path, done)
    (done / MARKER).write_text("{}", encoding="utf-8")
    with gr.Blocks():
        parts = model_picker.build(ctx)
    choice = parts["choice"]
    assert isinstance(choice, gr.Dropdown) and choice.elem_id == "model-choice"
    assert choice.allow_custom_value and choice.value == "demo"
    values = [value for _, value in choice.choices]
    assert values[0] == "demo" and str(done) in values and "qwen3-8b" in values and "qwen3-30b-a3b" in values
    for key in ("hub", "quant", "method", "status", "progress", "download", "cancel", "refresh", "local_path"):
        assert key in parts
    assert parts["hub"].value == "hf" and parts["quant"].value == "auto"
    assert ctx.shared["model_picker"] is parts
    assert parts["is_downloaded"]("qwen3-8b", "hf", "qlora", "auto")
    assert not parts["is_downloaded"]("qwen3-8b", "hf", "lora", "auto")
    assert not parts["is_downloaded"]("no such thing")


def test_an_outside_method_radio_is_used(ctx, no_network):
    import gradio as gr

    with gr.Blocks():
        method = gr.Radio(["lora", "qlora"], value="lora")
        parts = model_picker.build(ctx, method=method)
    assert parts["method"] is method


def test_gpu_mode_defaults_to_a_downloaded_model(tmp_path, no_network, demo_model_path):
    import gradio as gr

    from gui.app import AppContext

    done = repo_dir("unsloth/Qwen3-4B-unsloth-bnb-4bit", "hf")
    shutil.copytree(demo_model_path, done)
    (done / MARKER).write_text("{}", encoding="utf-8")
    with gr.Blocks():
        parts = model_picker.build(AppContext(runs_dir=tmp_path, demo=False, lang="zh"))
    assert parts["choice"].value == str(done)


def test_describe_each_kind_of_choice(ctx, model_copy, demo_model_path):
    text, path = model_picker.describe(ctx, "demo", "hf", "qlora", "auto")
    assert "demo model" in text and path
    good = model_copy("good")
    text, path = model_picker.describe(ctx, str(good), "hf", "qlora", "auto")
    assert text.startswith("✔") and "qwen3" in text and path == str(good.resolve())
    bad = model_copy("bad")
    (bad / "model.safetensors").unlink()
    text, path = model_picker.describe(ctx, str(bad), "hf", "qlora", "auto")
    assert text.startswith("✖") and "no weights" in text and path == ""
    text, path = model_picker.describe(ctx, "qwen3-8b", "modelscope", "qlora", "auto")
    assert "unsloth/Qwen3-8B-unsloth-bnb-4bit" in text and "ModelScope" in text and "not downloaded" in text
    assert path == ""
    text, path = model_picker.describe(ctx, "qwen3-30b-a3b", "hf", "qlora", "dynamic4")
    assert text.startswith("✖") and "mixture-of-experts" in text
    done = repo_dir("unsloth/Qwen3-8B-unsloth-bnb-4bit", "modelscope")
    shutil.copytree(demo_model_path, done)
    (done / MARKER).write_text(json.dumps({"repo_id": "unsloth/Qwen3-8B-unsloth-bnb-4bit"}), encoding="utf-8")
    text, path = model_picker.describe(ctx, "qwen3-8b", "hf", "qlora", "auto")
    assert text.startswith("✔") and path == str(done)


def test_progress_html_shows_bytes_speed_eta_and_errors(ctx):
    p = DownloadProgress("unsloth/Qwen3-8B-unsloth-bnb-4bit", "hf", "downloading", 2_000_000_000,
                         5_000_000_000, 40_000_000, 75.0)
    html = model_picker.progress_html(ctx, p)
    assert "40.0%" in html and "2.00 GB of 5.00 GB" in html and "40.00 MB/s" in html and "1m15s" in html
    failed = DownloadProgress("x/y", "hf", "failed", error="Cannot reach Hugging Face <host>",
                              advice="Or use ModelScope")
    html = model_picker.progress_html(ctx, failed)
    assert 'data-state="failed"' in html and "&lt;host&gt;" in html and "Or use ModelScope" in html


def test_strings_exist_in_chinese(tmp_path):
    from gui.app import AppContext

    zh = AppContext(runs_dir=tmp_path, demo=True, lang="zh")
    labels = dict((v, k) for k, v in model_picker.choices(zh))
    assert "离线" in labels["demo"]
    assert "下载" in zh.t("models.download")


def _running_record(repo_id: str = "acme/Qwen3-Tiny", done: int = 1000, pid: int | None = None):
    """A download record and log as an earlier server leaves them; its pid is a live process."""
    import os

    from core.models.jobs import DownloadJob
    from core.procs import JobRecord

    job = DownloadJob(repo_id, hub="hf")
    job.record_path.parent.mkdir(parents=True, exist_ok=True)
    line = DownloadProgress(repo_id=repo_id, hub="hf", state="downloading", done_bytes=done, total_bytes=4000)
    job.log_path.write_text(json.dumps(line.to_dict()) + "\n", encoding="utf-8")
    JobRecord(kind="download", command=job.command(), log=str(job.log_path), pid=pid or os.getpid(),
              info={"name_or_path": repo_id, "hub": "hf", "method": "qlora", "quant": "auto", "cache_dir": "",
                    "repo_id": repo_id}).write(job.record_path)
    return job


def test_a_download_an_earlier_server_started_is_shown_and_followed(ctx, no_network):
    import gradio as gr

    job = _running_record()
    with gr.Blocks():
        model_picker.build(ctx)  # a fresh server: nothing in memory
    shown = model_picker.shown_download(ctx, "acme/Qwen3-Tiny", "hf", "qlora", "auto")
    assert shown is not None and shown.record_path == job.record_path
    # Another choice on the page still shows the running download.
    assert model_picker.shown_download(ctx, "demo", "hf", "lora", "auto").record_path == job.record_path
    bar, running = model_picker.follow(ctx, str(job.record_path))
    assert running and "25.0%" in bar and 'data-state="downloading"' in bar
    line = DownloadProgress(repo_id="acme/Qwen3-Tiny", hub="hf", state="done", done_bytes=4000, total_bytes=4000)
    with job.log_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line.to_dict()) + "\n")
    bar, running = model_picker.follow(ctx, str(job.record_path))
    assert not running and 'data-state="done"' in bar
    assert model_picker.follow(ctx, "") == ("", False)


def test_download_attaches_to_a_running_one_and_cancel_stops_it(ctx, no_network):
    import subprocess
    import sys

    from core.procs import JobRecord

    # A stand-in for the earlier server's download process: its own session, like spawn_core's.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        job = _running_record(pid=child.pid)
        attached = model_picker.start_download(ctx, "acme/Qwen3-Tiny", "hf", "qlora", "auto")
        assert attached._proc is None and attached.pid == child.pid  # no second process
        assert model_picker.cancel_download(ctx, "demo", "hf", "lora", "auto", str(job.record_path))
        assert child.wait(10) is not None
        assert JobRecord.read(job.record_path).state == "cancelled"
        assert model_picker.follow(ctx, str(job.record_path))[0].count('data-state="cancelled"') == 1
        assert not model_picker.cancel_download(ctx, "acme/Qwen3-Tiny", "hf", "qlora", "auto")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_page_load_and_follow_events_show_the_running_download(ctx, no_network):
    """The wired handlers (as Gradio calls them) return one value per output and show the bar."""
    import gradio as gr

    job = _running_record(done=2000)
    with gr.Blocks() as page:
        parts = model_picker.build(ctx)
    handlers = {f.fn.__name__: f for f in page.fns.values() if f.fn is not None}
    load, follow_fn = handlers["on_load"], handlers["on_follow"]
    out = load.fn("demo", "hf", "lora", "auto")
    assert len(out) == len(load.outputs)
    by_id = dict(zip([o._id for o in load.outputs], out, strict=True))
    assert "50.0%" in by_id[parts["progress"]._id] and by_id[parts["shown_download"]._id] == str(job.record_path)
    out = follow_fn.fn(str(job.record_path))
    assert len(out) == len(follow_fn.outputs) and "50.0%" in out[0]
    job.record_path.unlink()
    out = load.fn("demo", "hf", "lora", "auto")  # nothing running: the bar is left as it is
    assert len(out) == len(load.outputs)
