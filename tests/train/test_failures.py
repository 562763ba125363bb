"""Training runs that fail: the run folder tells the truth afterwards (kind, advice, resumable)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.train.conftest import run_config


def test_a_network_failure_while_downloading_the_model_is_resumable_with_its_advice(
        tmp_path, monkeypatch, facts_mix):
    """The run's model is a hub id that cannot be fetched: status.json says network, resumable, and
    keeps the downloader's advice (not "fix the setting")."""
    from core.models.errors import HubUnreachable
    from core.train import runs, worker


    def unreachable(name, **_kw):
        raise HubUnreachable("Cannot reach Hugging Face (huggingface.co): connection refused",
                             advice="Check the network, or use --hub modelscope; files already downloaded "
                                    "are kept.")

    import core.models

    monkeypatch.setattr(core.models, "resolve_model", unreachable)
    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")
    cfg = run_config("acme/Qwen3-Tiny", facts_mix, tmp_path / "runs", name="net")
    rc = worker.run(cfg)
    st = runs.read_status(Path(cfg.runs_dir) / "net")
    assert rc == worker.EXIT_FAILED
    assert st.state == "failed" and st.error_kind == "network" and st.resumable is True
    assert "Cannot reach Hugging Face" in st.error and "model.name_or_path" in st.error
    assert st.advice.startswith("Check the network, or use --hub modelscope")
    assert "Fix the setting" not in st.advice


# ------------------------------------------------------------------------------- disk full
def test_the_failure_report_survives_a_full_disk(tmp_path, monkeypatch):
    """Even when a normal status write fails for lack of space, the run ends ``failed`` (through the
    space reserved when the worker started) with what was free and what a checkpoint needs."""
    import errno
    import json

    from core.train import runs, worker

    run_dir = tmp_path / "runs" / "full"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: full\n")
    runs.write_status(run_dir, state="running", pid=os.getpid(), step=7, total_steps=20, trainable_params=1000)
    ckpt = run_dir / "checkpoints" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 300_000)
    cut = run_dir / "checkpoints" / "checkpoint-10"  # cut off by the full disk: no trainer_state.json
    cut.mkdir()
    (cut / "optimizer.pt").write_bytes(b"\0" * 1000)
    reserve = worker.FailureReserve(run_dir)
    assert (run_dir / ".reserve").stat().st_size == worker.FailureReserve.BALLAST_BYTES

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "write_status", no_space)  # the disk is still full when we report
    exc = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")
    exc.__context__ = OSError(errno.ENOSPC, "No space left on device")
    rc = worker._record_failure(None, run_dir, exc, None, "peft", reserve)
    assert rc == worker.EXIT_FAILED
    st = json.loads((run_dir / "status.json").read_text())
    assert st["state"] == "failed" and st["disk_full"] is True and st["resumable"] is True
    assert st["error_kind"] == "resource" and st["step"] == 7  # what was there is kept
    assert st["error"].startswith("disk full: ") and f"MB free in {run_dir}" in st["error"]
    assert "a checkpoint needs about 0.3 MB" in st["error"] and "checkpoint-5" in st["advice"]
    assert not cut.exists() and ckpt.exists()  # the cut-off checkpoint is dropped, the good one kept
    assert not (run_dir / ".reserve").exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.slow
def test_disk_full_mid_run_on_a_tiny_tmpfs(tmp_path, learnable_model, facts_mix):
    """A real run whose runs folder is a 1.2 MB tmpfs: the first checkpoint (about 0.3 MB) does not
    fit next to the reserve. The run ends failed and says why, with no cut-off checkpoint left."""
    import json
    import subprocess

    from core.settings import dump_yaml
    from tests.train.test_training import train_cli

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1200k"):
        pytest.skip("cannot mount a tmpfs here (not root, or no permission): the injected test covers it")
    try:
        cfg = run_config(learnable_model, facts_mix, disk, name="full", max_steps=6, save_steps=2, eval_steps=0)
        dump_yaml(cfg, tmp_path / "full.yaml")
        proc = train_cli(tmp_path / "full.yaml")
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        run_dir = disk / "full"
        st = json.loads((run_dir / "status.json").read_text())
        assert st["state"] == "failed" and st["disk_full"] and st["resumable"], st
        assert st["error"].startswith("disk full: ") and "a checkpoint needs about" in st["error"]
        assert "Traceback" not in st["error"]
        assert "disk full" in proc.stdout + proc.stderr
        assert not any(p.name.startswith("checkpoint-") for p in (run_dir / "checkpoints").glob("*"))
        assert not (run_dir / ".reserve").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# ------------------------------------------------- resume: same losses, never past the end, the folder given
def _in_process(cfg, monkeypatch, resume=False):
    from core.train import worker

    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")
    return worker.run(cfg, resume=resume)


@pytest.mark.slow
def test_resumed_losses_equal_an_uninterrupted_run(tmp_path, learnable_model, facts_mix, monkeypatch):
    """As torchtune's resume test: same seed and data; a run stopped at its checkpoint and resumed
    logs the same losses after the checkpoint as a run that never stopped."""
    from core.train import runs
    from core.train.callbacks import ProgressCallback

    settings = dict(max_steps=8, save_steps=4, eval_steps=0, learning_rate=5e-3)
    whole = run_config(learnable_model, facts_mix, tmp_path / "runs", name="whole", **settings)
    assert _in_process(whole, monkeypatch) == 0

    original = ProgressCallback.on_step_end

    def stop_at_4(self, args, state, control, **kwargs):
        if state.global_step == 4 and not self.stop_path.exists():
            self.stop_path.write_text("test\n")
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(ProgressCallback, "on_step_end", stop_at_4)
    split = run_config(learnable_model, facts_mix, tmp_path / "runs", name="split", **settings)
    assert _in_process(split, monkeypatch) == 0
    split_dir = tmp_path / "runs" / "split"
    assert runs.read_status(split_dir).state == "stopped"
    monkeypatch.setattr(ProgressCallback, "on_step_end", original)
    assert _in_process(split, monkeypatch, resume=True) == 0

    def losses(run):
        return {m["step"]: m["loss"] for m in runs.read_metrics(tmp_path / "runs" / run) if m.get("loss") is not None}

    a, b = losses("whole"), losses("split")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in range(5, 9):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), (step, a, b)
    import json

    lines = [json.loads(x) for x in (split_dir / "metrics.jsonl").read_text().splitlines()]
    # one line per step on disk, though steps 5.. were logged by the resumed run (plus its final eval)
    assert [x["step"] for x in lines if x["loss"] is not None] == list(range(1, 9))
    st = runs.read_status(split_dir)
    assert st.state == "done" and st.step == st.total_steps == 8


KILL_AT_THE_END = """
import os, signal, sys
from core.settings import load_yaml
from core.config import RunConfig
from core.train import backends, worker

def killed(*_a, **_k):  # the moment after the last checkpoint, before the adapter and `done`
    os.kill(os.getpid(), signal.SIGKILL)

backends.save_adapter = killed
sys.exit(worker.run(load_yaml(RunConfig, sys.argv[1])))
"""


@pytest.mark.slow
def test_kill_after_the_last_checkpoint_then_resume_of_a_copy_only_finishes(tmp_path, learnable_model, facts_mix):
    """Killed between the last checkpoint and `done`: resume finishes (adapter, eval) at 6/6 and never
    trains step 7. The resume is of a copied folder: the copy is the run, the original is untouched."""
    import json
    import shutil
    import subprocess
    import sys

    from core.settings import dump_yaml
    from core.train import runs
    from tests.conftest import ROOT
    from tests.train.test_training import starts, train_cli

    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="end", max_steps=6, save_steps=3,
                     eval_steps=0)
    dump_yaml(cfg, tmp_path / "end.yaml")
    proc = subprocess.run([sys.executable, "-c", KILL_AT_THE_END, str(tmp_path / "end.yaml")], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), QWENTUNE_LOG_REDIRECTED="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout[-3000:] + proc.stderr[-3000:]
    original = tmp_path / "runs" / "end"
    (original / "train.log").write_text(proc.stdout + proc.stderr)
    st = runs.read_status(original)
    assert st.state == "failed" and st.lost and runs.latest_checkpoint(original).name == "checkpoint-6"
    before = json.loads((original / "status.json").read_text())

    copy = tmp_path / "elsewhere" / "end-copy"
    shutil.copytree(original, copy)
    done = train_cli(copy, "--resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    st = runs.read_status(copy)
    assert st.state == "done" and st.step == st.total_steps == 6, st
    assert (copy / "adapter" / "adapter_model.safetensors").is_file()
    assert "checkpoint-6 is the last step" in done.stdout + done.stderr
    assert "done: step 6/6" in done.stdout + done.stderr
    assert starts(copy) == [0]  # only the first process trained; the resumed one did not start training
    assert [m["step"] for m in runs.read_metrics(copy) if m.get("loss") is not None] == [1, 2, 3, 4, 5, 6]
    assert not (copy / "checkpoints" / "checkpoint-7").exists()
    from core.config import load_run_config

    resumed_cfg = load_run_config(copy / "config.yaml")
    assert resumed_cfg.name == "end-copy" and Path(resumed_cfg.runs_dir) == copy.parent.resolve()
    assert json.loads((original / "status.json").read_text()) == before  # the original is not touched
    assert not (original / "adapter").exists()


@pytest.mark.slow
def test_out_of_memory_in_the_final_evaluation_then_resume_only_finishes(tmp_path, learnable_model, facts_mix,
                                                                         monkeypatch):
    import torch
    import transformers

    from core.train import runs, worker

    real_evaluate = transformers.Trainer.evaluate

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "evaluate", oom)
    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="evaloom", max_steps=4, save_steps=2,
                     eval_steps=0)  # eval_steps 0: one evaluation, after the last step
    assert _in_process(cfg, monkeypatch) == worker.EXIT_OOM
    run_dir = tmp_path / "runs" / "evaloom"
    st = runs.read_status(run_dir)
    assert st.state == "failed" and st.oom and st.resumable and st.step == 4
    assert runs.latest_checkpoint(run_dir).name == "checkpoint-4" and not (run_dir / "adapter").exists()

    monkeypatch.setattr(transformers.Trainer, "evaluate", real_evaluate)
    assert _in_process(cfg, monkeypatch, resume=True) == 0
    st = runs.read_status(run_dir)
    assert st.state == "done" and st.step == st.total_steps == 4 and st.eval_loss is not None
    assert st.error is None and not st.oom
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert [m["step"] for m in runs.read_metrics(run_dir) if m.get("loss") is not None] == [1, 2, 3, 4]
