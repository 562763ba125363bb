"""core.train.runs: the run folder contract, read back purely from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from core import runfolder
from core.settings import write_json_atomic
from core.train import runs
from tests.conftest import ROOT


def make_run(root, name, status, metrics=(), created=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"name: {name}\ndata: {{mix_dir: x}}\n")
    write_json_atomic(d / "status.json", dict(status))
    with (d / "metrics.jsonl").open("w") as f:
        for m in metrics:
            f.write(json.dumps(m) + "\n")
    if created:
        os.utime(d / "config.yaml", (created, created))
    return d


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_run_whose_process_died_is_failed_and_resumable(tmp_path):
    d = make_run(tmp_path, "r", {"state": "running", "pid": dead_pid(), "step": 7})
    (d / "checkpoints" / "checkpoint-6").mkdir(parents=True)
    (d / "checkpoints" / "checkpoint-6" / "trainer_state.json").write_text("{}")
    st = runs.read_status(d)
    assert st["state"] == "failed" and st["resumable"] and st["lost"]
    assert "checkpoint-6" in st["advice"]
    assert json.loads((d / "status.json").read_text())["state"] == "running"  # reading never writes


def test_live_run_with_stop_file_reads_as_stopping(tmp_path):
    d = make_run(tmp_path, "r", {"state": "running", "pid": os.getpid()})
    assert runs.read_status(d)["state"] == "running"
    runs.request_stop(d)
    assert (d / runs.STOP_FLAG).exists()
    assert runs.read_status(d)["state"] == "stopping"


def test_queued_run_that_never_started_fails_after_the_grace_time(tmp_path, monkeypatch):
    d = make_run(tmp_path, "q", {"state": "queued", "pid": None, "queued": runs.now_iso()})
    assert runs.read_status(d)["state"] == "queued"
    monkeypatch.setattr(runfolder, "QUEUED_GRACE_S", -1.0)
    assert runs.read_status(d)["state"] == "failed"


def test_metrics_skip_a_torn_last_line(tmp_path):
    d = make_run(tmp_path, "m", {"state": "running", "pid": os.getpid()}, [{"step": 1, "loss": 2.0}])
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "lo')
    assert runs.read_metrics(d) == [{"step": 1, "loss": 2.0}]
    assert runs.read_metrics(tmp_path / "nothing") == []


def test_list_runs_newest_first_from_disk_alone(tmp_path):
    now = time.time()
    make_run(tmp_path, "old", {"state": "done"}, created=now - 100)
    make_run(tmp_path, "new", {"state": "done", "queued": runs.now_iso()})
    (tmp_path / "not-a-run").mkdir()
    names = [r["name"] for r in runs.list_runs(tmp_path)]
    assert names == ["new", "old"]
    assert runs.list_runs(tmp_path / "missing") == []


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path):
    d = make_run(tmp_path, "c", {"state": "done"})
    for step, complete in ((5, True), (10, True), (15, False)):
        p = d / "checkpoints" / f"checkpoint-{step}"
        p.mkdir(parents=True)
        if complete:
            (p / "trainer_state.json").write_text("{}")
    assert runs.latest_checkpoint(d).name == "checkpoint-10"


def test_stop_and_resume_refuse_what_makes_no_sense(tmp_path):
    d = make_run(tmp_path, "done", {"state": "done"})
    with pytest.raises(runs.RunError):
        runs.request_stop(d)
    with pytest.raises(runs.RunError):
        runs.resume_run(d)
    live = make_run(tmp_path, "live", {"state": "running", "pid": os.getpid()})
    with pytest.raises(runs.RunError):
        runs.resume_run(live)
    with pytest.raises(runs.RunError):
        runs.delete_run(live)


def test_run_model_paths_names_base_and_adapter(tmp_path, demo_model_path):
    d = make_run(tmp_path, "p", {"state": "done", "model_path": str(demo_model_path), "method": "qlora"})
    (d / "config.yaml").write_text("name: p\nmodel: {name_or_path: demo, method: qlora}\ndata: {mix_dir: x}\n")
    got = runs.run_model_paths(d)
    assert got.base == str(demo_model_path) and got.adapter is None and got.load_in_4bit
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text("{}")
    assert runs.run_model_paths(d).adapter == str(d / "adapter")


def test_run_names_are_folder_safe():
    from core.settings import ConfigError

    for bad in ("", "..", "a/b", ".hidden"):
        with pytest.raises(ConfigError):
            runs.check_run_name(bad)
    assert runs.new_run_name("/models/Qwen3-8B/", "qlora").startswith("Qwen3-8B-qlora-")


def test_stop_now_kills_the_worker_and_records_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        d = make_run(tmp_path, "k", {"state": "running", "pid": proc.pid, "step": 3})
        (d / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (d / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
        st = runs.kill_run(d)
        assert proc.wait(timeout=10) == -9
        assert st["state"] == "stopped" and st["killed"] and st["resumable"]
        assert "checkpoint-2" in st["advice"]
        assert runs.read_status(d)["state"] == "stopped"
        with pytest.raises(runs.RunError):
            runs.kill_run(d)
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------- claiming a run name
def test_many_synchronized_starts_of_one_name_claim_it_once(tmp_path):
    """Threads released at once all claim the same name: exactly one wins, the rest get RunError."""
    import threading

    def claim(barrier, results, folder):
        barrier.wait()
        try:
            results.append(runs.claim_run_dir(folder))
        except runs.RunError as exc:
            results.append(exc)

    for round_ in range(20):
        barrier = threading.Barrier(12)
        results: list = []
        threads = [threading.Thread(target=claim, args=(barrier, results, tmp_path / f"race-{round_}"))
                   for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins = [r for r in results if not isinstance(r, Exception)]
        assert len(wins) == 1, results
        assert all("another process" in str(r) or "already exists" in str(r) for r in results if r not in wins)


def test_synchronized_start_run_processes_one_wins(tmp_path):
    """The same race between processes released at one shared start time; the winner goes on to
    write its config, as start_run and the worker do."""
    code = (
        "import sys, time\n"
        "from core.train import runs\n"
        "t = float(sys.argv[1])\n"
        "time.sleep(max(0.0, t - time.time()))\n"
        "try:\n"
        "    d = runs.claim_run_dir(sys.argv[2]); (d / 'config.yaml').write_text('name: same\\n'); print('won')\n"
        "except runs.RunError as exc:\n"
        "    print('lost:', exc)\n"
    )
    start = time.time() + 2.0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start), str(tmp_path / "same")], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sum(o == "won" for o in outs) == 1, outs
    assert all(o.startswith("lost: ") for o in outs if o != "won")


def test_a_leftover_folder_without_a_run_does_not_block_the_name(tmp_path):
    left = tmp_path / "left"
    left.mkdir()
    (left / ".status.json.1234.tmp").write_text("{")  # a start that died while writing its status
    assert runs.claim_run_dir(left) == left
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / ".claim").write_text(f"{dead_pid()} 2026-01-01T00:00:00\n")  # its claimer is gone
    assert runs.claim_run_dir(stale) == stale
    assert (stale / ".claim").read_text().split()[0] == str(os.getpid())
    with pytest.raises(runs.RunError, match="another process"):  # a live claim blocks
        runs.claim_run_dir(stale)
    done = make_run(tmp_path, "done", {"state": "done"})
    with pytest.raises(runs.RunError, match="already exists"):
        runs.claim_run_dir(done)


# ---------------------------------------------------------------------- corrupt run folders
def test_one_corrupt_run_folder_does_not_break_the_listing(tmp_path):
    from core.runs_overview import overview

    make_run(tmp_path, "good", {"state": "done", "step": 3, "total_steps": 3}, [{"step": 3, "loss": 1.0}])
    bad_utf8 = make_run(tmp_path, "bad-utf8", {"state": "done"})
    (bad_utf8 / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": "\xff\xfe"}\n')
    non_object = make_run(tmp_path, "non-object", {"state": "done"})
    (non_object / "metrics.jsonl").write_text('[1, 2]\n"text"\n{"step": 1, "loss": 2.0}\n')
    as_list = make_run(tmp_path, "status-list", {"state": "done"})
    (as_list / "status.json").write_text("[1, 2]")
    text_pid = make_run(tmp_path, "text-pid", {"state": "running"})
    (text_pid / "status.json").write_text('{"state": "running", "pid": "1234"}')
    not_utf8 = make_run(tmp_path, "status-bytes", {"state": "done"})
    (not_utf8 / "status.json").write_bytes(b'{"state": "done", "model": "\xff"}')
    (tmp_path / "bad-config").mkdir()
    (tmp_path / "bad-config" / "config.yaml").write_bytes(b"name: \xff\n")

    listed = {r["name"]: r for r in runs.list_runs(tmp_path)}
    assert set(listed) == {"good", "bad-utf8", "non-object", "status-list", "text-pid", "status-bytes",
                           "bad-config"}
    assert listed["good"]["state"] == "done" and not listed["good"]["unreadable"]
    for name, why in (("status-list", "expected a JSON object"), ("text-pid", "pid is '1234'"),
                      ("status-bytes", "not UTF-8")):
        assert listed[name]["state"] == "failed" and why in listed[name]["unreadable"], listed[name]
        assert listed[name]["status"]["error"].startswith("unreadable: ")
    assert runs.read_metrics(bad_utf8) == [{"step": 1, "loss": 2.0}]
    assert runs.read_metrics(non_object) == [{"step": 1, "loss": 2.0}]
    rows = {r.name: r for r in overview(tmp_path)}
    assert len(rows) == 7 and rows["good"].final_loss == 1.0
    assert rows["text-pid"].error.startswith("unreadable: ") and rows["bad-config"].error
    with pytest.raises(runs.RunError, match="unreadable"):
        runs.resume_run(text_pid)
