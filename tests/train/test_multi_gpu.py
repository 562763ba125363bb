"""ddp and fsdp through accelerate's launcher, tested on the CPU: two processes of the demo model
talking over gloo (QWENTUNE_CPU_RANKS=2), started by the same `python -m core train` the GUI runs.

The fast tests check the launch plan (train.gpus, the accelerate config, the rank-0 rule, the
effective batch); the slow ones train: ddp and fsdp match a single process with the same effective
batch, Stop ends every rank on one step, a kill -9 of one rank fails the run resumably and resume
finishes it, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import ConfigError, dump_yaml
from core.train import autobatch, launch, runs, supervise
from tests.conftest import ROOT
from tests.train.conftest import run_config
from tests.train.test_training import starts
from tests.train.test_training import wait_until as _wait_until


# --------------------------------------------------------------------------------- the plan
def cfg_with(tmp_path, **train):
    from core.config import RunConfig
    from core.settings import from_dict

    return from_dict(RunConfig, {"name": "x", "runs_dir": str(tmp_path), "train": train,
                                 "data": {"mix_dir": str(tmp_path)}})


@pytest.mark.parametrize(("spec", "strategy", "available", "ids"), [
    ("auto", "ddp", 4, (0, 1, 2, 3)),
    ("auto", "single", 4, (0,)),
    ("auto", "single", 0, ()),
    ("2", "ddp", 4, (0, 1)),
    ("1,3", "fsdp", 4, (1, 3)),
    ("2,", "single", 4, (2,)),
    ("[0, 1]", "ddp", 2, (0, 1)),
])
def test_train_gpus_resolves_against_the_cards(spec, strategy, available, ids):
    assert launch.resolve_gpus(spec, strategy, available) == ids


@pytest.mark.parametrize(("spec", "strategy", "available", "words"), [
    ("3", "ddp", 2, "3 GPUs asked for, but this machine has 2 GPUs visible"),
    ("0,4", "ddp", 2, "GPU id 4 does not exist: 2 GPUs visible (ids 0-1)"),
    ("1,1", "ddp", 2, "repeat"),
    ("two", "ddp", 2, "expected auto, a count"),
    ("0,1", "single", 2, "strategy single trains on one GPU"),
])
def test_bad_train_gpus_is_a_config_error_naming_it(spec, strategy, available, words):
    with pytest.raises(ConfigError) as err:
        launch.resolve_gpus(spec, strategy, available)
    assert err.value.where == "train.gpus" and words in err.value.message


def test_plan_on_the_cpu_needs_the_testing_variable(tmp_path, monkeypatch):
    cfg = cfg_with(tmp_path, strategy="ddp")
    monkeypatch.delenv(launch.CPU_RANKS_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        launch.plan(cfg, available=0)
    assert err.value.where == "train.strategy"
    monkeypatch.setenv(launch.CPU_RANKS_ENV, "2")
    assert launch.plan(cfg, available=0) == launch.Plan("ddp", (), 2, cpu=True)
    assert launch.plan(cfg_with(tmp_path, strategy="ddp", gpus="2"), available=3) == launch.Plan("ddp", (0, 1), 2)
    assert launch.plan(cfg_with(tmp_path), available=3) == launch.Plan("single", (0,), 1)


def test_visible_devices_count_within_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert launch.visible_gpu_count() == 3
    assert launch.Plan("ddp", (0, 2), 2).visible_devices() == "4,6"
    assert launch.accelerate_config(launch.Plan("ddp", (0, 2), 2))["gpu_ids"] == "4,6"
    env = launch.rank_env(launch.Plan("ddp", (0, 2), 2), base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "4,6" and env[launch.LAUNCHER_ENV] == str(os.getpid())
    assert "gpu_ids" not in launch.accelerate_config(launch.Plan("ddp", (), 2, cpu=True))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.Plan("ddp", (0, 2), 2).visible_devices() == "0,2"


def test_accelerate_config_for_fsdp2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    layer = launch.decoder_layer_class(tmp_path)
    assert layer == "Qwen3MoeDecoderLayer"
    data = launch.accelerate_config(launch.Plan("fsdp", (1, 3), 2), layer_class=layer, port=29555)
    assert data["distributed_type"] == "FSDP" and data["num_processes"] == 2
    assert data["gpu_ids"] == launch.Plan("fsdp", (1, 3), 2).visible_devices()  # accelerate sets the ranks' GPUs
    fsdp = data["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Qwen3MoeDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    ddp = launch.accelerate_config(launch.Plan("ddp", (), 2, cpu=True))
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["use_cpu"] and "fsdp_config" not in ddp
    cmd = launch.rank_command(tmp_path, tmp_path / "accelerate.yaml", resume=True)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert cmd[-5:] == ["-m", "core", "train", str(tmp_path), "--resume"]
    assert launch.worker_command(tmp_path, resume=False)[1:] == ["-m", "core", "train", str(tmp_path)]


def test_only_rank_0_writes_status(tmp_path, monkeypatch):
    runs.write_status(tmp_path, state="running", step=1)
    monkeypatch.setenv(launch.LAUNCHER_ENV, str(os.getpid()))
    monkeypatch.setenv("RANK", "1")
    assert not launch.writes_run_folder()
    seen = runs.write_status(tmp_path, step=7)
    assert seen.step == 7  # callers see the update ...
    assert runs.read_status(tmp_path).step == 1  # ... but rank 1 wrote nothing
    with pytest.raises(TypeError):
        runs.write_status(tmp_path, no_such_field=1)
    monkeypatch.setenv("RANK", "0")
    assert runs.write_status(tmp_path, step=8) and runs.read_status(tmp_path).step == 8


def test_an_outside_launcher_is_refused(tmp_path, monkeypatch):
    """`accelerate launch -m core train` by hand would start N workers that each claim the run."""
    from core.train import worker

    monkeypatch.delenv(launch.LAUNCHER_ENV, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError) as err:
        worker.run(cfg_with(tmp_path, strategy="ddp"))
    assert err.value.where == "train.strategy" and not (tmp_path / "x").exists()


def test_micro_batch_auto_shares_the_effective_batch():
    assert autobatch.share_rows(4, 2)[0] == 4  # 2 x 4 = 8 rows, 4 per process
    rows, why = autobatch.share_rows(3, 4)  # 6 rows do not divide over 4 processes
    assert rows == 6 and "effective batch is 24 rows" in why
    choice = autobatch.choose_micro_batch("qwen3-8b", vram_gib=None, grad_accum=4, method="lora", seq_len=512,
                                          rows=1)
    assert (choice.micro_batch, choice.grad_accum) == (1, 1)


def test_fsdp_refuses_unsloth_and_old_bitsandbytes(tmp_path):
    from core.config import RunConfig
    from core.settings import from_dict
    from core.train.validate import check_strategy

    cfg = from_dict(RunConfig, {"model": {"backend": "unsloth", "method": "qlora"}, "train": {"strategy": "fsdp"},
                                "data": {"mix_dir": str(tmp_path)}})
    codes = {p.code: p for p in check_strategy(cfg, bnb_version="0.42.0")}
    assert set(codes) == {"fsdp_needs_peft", "fsdp_qlora_old_bnb"}
    assert codes["fsdp_qlora_old_bnb"].setting == "model.method" and "0.43.0" in codes["fsdp_qlora_old_bnb"].message
    cfg.model.backend = "auto"
    assert check_strategy(cfg, bnb_version="0.45.1") == []
    cfg.train.strategy = "ddp"
    cfg.model.backend = "unsloth"
    assert check_strategy(cfg, bnb_version="0.42.0") == []


def test_fsdp_resumes_only_on_the_process_count_of_its_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    for name in ("trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"):
        (ckpt / name).write_text("{}")
    assert launch.checkpoint_world_size(ckpt) == 2
    launch.check_resume(tmp_path, launch.Plan("fsdp", (0, 1), 2))
    launch.check_resume(tmp_path, launch.Plan("ddp", (0, 1, 2), 3))  # ddp: any number
    with pytest.raises(ConfigError) as err:
        launch.check_resume(tmp_path, launch.Plan("fsdp", (0, 1, 2), 3))
    assert err.value.where == "train.gpus" and "written by 2 processes" in err.value.message


def test_a_rank_failure_reported_to_the_parent_is_recorded(tmp_path):
    """A rank other than 0 that fails writes its outcome to the parent's report folder; the parent
    records it (an error of its own wins over one that only saw a peer go)."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "rank-2.json").write_text(json.dumps({"rank": 2, "kind": "run", "error": "lost peer",
                                                      "advice": "", "resumable": True, "peer_lost": True}))
    (reports / "rank-1.json").write_text(json.dumps({"rank": 1, "kind": "resource", "oom": True, "resumable": True,
                                                      "error": "Out of GPU memory: boom", "advice": "Try less."}))
    report = supervise._first_report(reports)
    assert report["rank"] == 1
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runs.write_status(run_dir, state="running")
    code = supervise._record_lost_rank(run_dir, launch.Plan("ddp", (0, 1, 2), 3), 1, report)
    st = runs.read_status(run_dir)
    assert code == 3 and st.state == "failed" and st.oom and st.error_kind == "resource"
    assert st.error == "rank 1: Out of GPU memory: boom" and st.advice == "Try less." and st.resumable
    supervise._record_lost_rank(run_dir, launch.Plan("ddp", (0, 1), 2), -9, None)
    st = runs.read_status(run_dir)
    assert st.error_kind == "run" and st.resumable and "signal SIGKILL" in st.error


# ------------------------------------------------------------------------------- real runs
STEPS = 6


def train_cli(cfg_path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "train", str(cfg_path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
                          timeout=420)


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in runs.read_metrics(run_dir) if m.get("loss") is not None]


def short_config(model, mix, runs_dir, name, **train):
    settings = {"max_steps": STEPS, "micro_batch": 1, "grad_accum": 2, "save_steps": 3, "eval_steps": 0,
                "packing": "off", "logging_steps": 1}
    settings.update(train)
    cfg = run_config(model, mix, runs_dir, name=name, **settings)
    cfg.lora.dropout = 0.0  # dropout masks are drawn per process; without them the runs can agree
    return cfg


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, learnable_model, facts_mix) -> dict[str, Path]:
    """The same training three ways, each with 4 rows per optimizer step: one process with micro-batch
    2 x accumulation 2, and ddp / fsdp with 2 processes x micro-batch 1 x accumulation 2."""
    root = tmp_path_factory.mktemp("multi")
    out = {}
    for name, strategy, micro in (("single", "single", 2), ("ddp", "ddp", 1), ("fsdp", "fsdp", 1)):
        cfg = short_config(learnable_model, facts_mix, root / "runs", name, strategy=strategy, micro_batch=micro)
        dump_yaml(cfg, root / f"{name}.yaml")
        proc = train_cli(root / f"{name}.yaml", {launch.CPU_RANKS_ENV: "2"})
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        out[name] = root / "runs" / name
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_multi_process_run_matches_one_process(three_runs, strategy):
    """Same rows per optimizer step, same data order (accelerate hands the global batch's micro-batches
    out to the ranks in turn), so the loss curves agree. Tolerance: 1e-4 relative; what differs is
    only the order of float32 sums (the gradient all-reduce over gloo, the loss averaged over ranks),
    about 1e-6 here, while one step of training moves the loss by 5%."""
    single, multi = losses(three_runs["single"]), losses(three_runs[strategy])
    assert len(single) == len(multi) == STEPS
    assert multi == pytest.approx(single, rel=1e-4)
    assert multi[-1] < multi[0] * 0.9  # and it really trains
    st = runs.read_status(three_runs[strategy])
    assert st.state == "done" and st.step == st.total_steps == STEPS
    assert st.strategy == strategy and st.world_size == 2 and st.gpus == []
    assert (st.micro_batch, st.grad_accum, st.effective_batch) == (1, 2, 4)
    assert runs.read_status(three_runs["single"]).effective_batch == 4
    assert len(set(st.rank_pids)) == 2 and st.pid not in st.rank_pids and st.agent_pid
    log = (three_runs[strategy] / "train.log").read_text()
    assert f"batch 1 x 2 accumulation x 2 processes = 4 rows per step ({strategy})" in log


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_only_rank_0_writes_the_run_folder(three_runs, strategy):
    run_dir = three_runs[strategy]
    top = sorted(p.name for p in run_dir.iterdir())
    assert top == sorted(["accelerate.yaml", "adapter", "checkpoints", "config.yaml", "metrics.jsonl",
                          "mix_manifest.json", "status.json", "train.log"])
    log = (run_dir / "train.log").read_text()
    assert log.count("training: 6 steps") == 1 and log.count("adapter saved to") == 1  # one voice
    assert len(re.findall(r"^\[[\d:]+\] step 1/6 ", log, flags=re.M)) == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["loss"] is not None] == list(range(1, STEPS + 1))  # once per step
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"checkpoint-3", "checkpoint-6"}
    # The adapter is a plain PEFT adapter with every LoRA tensor, as a single process saves it.
    from safetensors.torch import load_file

    multi = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    single = load_file(str(three_runs["single"] / "adapter" / "adapter_model.safetensors"))
    assert multi.keys() == single.keys()
    assert max(float((multi[k] - single[k]).abs().max()) for k in single) < 1e-4


def wait_until(run_dir: Path, cond, timeout: float = 180.0):
    """Several processes start slower than one: a longer default wait than the single-process tests'."""
    return _wait_until(run_dir, cond, timeout)


def all_dead(st, timeout: float = 30.0) -> bool:
    pids = [st.pid, st.agent_pid, *(st.rank_pids or [])]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(runs.pid_alive(p) for p in pids if p):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def live_runs():
    """Run folders a test started; every process of a run still alive at the end is killed."""
    started: list[Path] = []
    yield started
    for run_dir in started:
        st = runs.read_status(run_dir)
        for pid in [st.pid, st.agent_pid, *(st.rank_pids or [])]:
            if pid and runs.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def start_slow_ddp(tmp_path, model, mix, monkeypatch, live_runs, name: str, max_steps: int) -> Path:
    """A two-process CPU ddp run through the launcher, with steps slow enough to act between them."""
    monkeypatch.setenv(launch.CPU_RANKS_ENV, "2")
    monkeypatch.setenv("QWENTUNE_STEP_DELAY_S", "0.3")
    cfg = short_config(model, mix, tmp_path / "runs", name, strategy="ddp", max_steps=max_steps)
    run_dir = runs.start_run(cfg, tmp_path / "runs")
    live_runs.append(run_dir)
    return run_dir


def wait_for_ranks(run_dir: Path):
    """The status once both ranks run and have trained two steps."""
    return wait_until(run_dir, lambda s: s.state == "running" and s.rank_pids and (s.step or 0) >= 2)


@pytest.mark.slow
def test_ddp_stop_kill9_and_resume(tmp_path, learnable_model, facts_mix, monkeypatch, live_runs):
    run_dir = start_slow_ddp(tmp_path, learnable_model, facts_mix, monkeypatch, live_runs, "ctl", 24)

    # Stop: rank 0 sees the stop file, every rank stops on the same step, one checkpoint there.
    wait_until(run_dir, lambda s: s.state == "running" and (s.step or 0) >= 4)
    runs.request_stop(run_dir)
    st = wait_until(run_dir, lambda s: s.state in ("stopped", "done", "failed"))
    assert st.state == "stopped", st
    stop_step = st.step
    assert 4 <= stop_step < 24
    assert runs.latest_checkpoint(run_dir).name == f"checkpoint-{stop_step}"
    assert all_dead(st), "a rank outlived the stop"
    assert "ChildFailedError" not in (run_dir / "train.log").read_text()  # both ranks ended cleanly
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    # kill -9 of rank 1: torchrun ends rank 0, the launcher parent marks the run failed, resumable.
    runs.resume_run(run_dir)
    st = wait_until(run_dir, lambda s: s.state == "running" and s.rank_pids and (s.step or 0) >= stop_step + 2)
    assert starts(run_dir) == [0, stop_step]
    os.kill(st.rank_pids[1], signal.SIGKILL)
    st = wait_until(run_dir, lambda s: s.state not in runs.ACTIVE, timeout=90)
    assert st.state == "failed" and st.resumable and st.error_kind == "run", st
    assert all_dead(st), "a process of the killed run is still alive"
    ckpt_step = runs.RunFolder(run_dir).latest_checkpoint().step

    # Resume finishes the run with the step count it always had.
    runs.resume_run(run_dir)
    st = wait_until(run_dir, lambda s: s.state in ("done", "failed"), timeout=240)
    assert st.state == "done" and st.step == st.total_steps == 24, st
    assert starts(run_dir)[-1] == ckpt_step
    assert [r["step"] for r in runs.read_metrics(run_dir) if r.get("loss") is not None] == list(range(1, 25))


@pytest.mark.slow
def test_kill9_of_the_launcher_ends_every_rank(tmp_path, learnable_model, facts_mix, monkeypatch, live_runs):
    """Stop now (kill_run) reaches the ranks, which lead sessions of their own."""
    run_dir = start_slow_ddp(tmp_path, learnable_model, facts_mix, monkeypatch, live_runs, "now", 40)
    st = wait_for_ranks(run_dir)
    runs.kill_run(run_dir)
    assert all_dead(st, timeout=15)
    st = runs.read_status(run_dir)
    assert st.state == "stopped" and st.killed and st.resumable


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["rank 0", "launcher parent"])
def test_kill9_of_rank_0_or_the_parent_fails_the_run_resumably(tmp_path, learnable_model, facts_mix, monkeypatch,
                                                               live_runs, victim):
    """Rank 0 killed: rank 1 is ended by torchrun and the parent records the failure. The parent
    killed: each rank sees its launcher gone and ends; the run reads as failed from its dead pid."""
    run_dir = start_slow_ddp(tmp_path, learnable_model, facts_mix, monkeypatch, live_runs, "k9", 40)
    st = wait_for_ranks(run_dir)
    os.kill(st.rank_pids[0] if victim == "rank 0" else st.pid, signal.SIGKILL)
    assert all_dead(st, timeout=30), f"a process outlived the kill of the {victim}"
    st = wait_until(run_dir, lambda s: s.state not in runs.ACTIVE, timeout=30)
    assert st.state == "failed" and st.resumable and st.error_kind == "run", st
