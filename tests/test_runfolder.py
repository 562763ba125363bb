"""core.runfolder: one type for a run's paths and rules, and a typed status.json."""

from __future__ import annotations

import json
import os

import pytest

from core.runfolder import RunFolder, Status
from core.settings import DamagedFile, read_json


def make(tmp_path, name="r", status=None, config=True):
    d = tmp_path / name
    d.mkdir(parents=True)
    if config:
        (d / "config.yaml").write_text(f"name: {name}\ndata: {{mix_dir: x}}\n")
    if status is not None:
        (d / "status.json").write_text(status if isinstance(status, str) else json.dumps(status))
    return RunFolder(d)


def test_paths_of_a_run_folder(tmp_path):
    f = RunFolder(tmp_path / "r")
    assert f.config.name == "config.yaml" and f.status_path.name == "status.json"
    assert f.metrics.name == "metrics.jsonl" and f.log.name == "train.log" and f.stop_flag.name == "stop"
    assert f.adapter.name == "adapter" and f.checkpoints_dir.name == "checkpoints" and f.mix.name == "mix"
    assert f.export_dir("gguf") == tmp_path / "r" / "export" / "gguf"
    assert f.eval_result() == tmp_path / "r" / "eval.json"
    assert f.eval_result(tmp_path / "r" / "adapter") == tmp_path / "r" / "eval.json"
    assert f.eval_result(tmp_path / "r" / "checkpoints" / "checkpoint-5") == tmp_path / "r" / "eval-checkpoint-5.json"


def test_unknown_status_keys_are_readable_but_not_written(tmp_path):
    f = make(tmp_path, status={"state": "done", "step": 3, "from_an_older_worker": 7})
    st = f.read_status_raw()
    assert st.state == "done" and st.step == 3
    assert st["from_an_older_worker"] == 7 and st.get("from_an_older_worker") == 7
    f.update_status(loss=0.5)
    on_disk = json.loads(f.status_path.read_text())
    assert on_disk["loss"] == 0.5 and on_disk["step"] == 3 and "from_an_older_worker" not in on_disk


def test_an_unknown_field_in_an_update_is_an_error(tmp_path):
    f = make(tmp_path, status={"state": "running", "pid": os.getpid()})
    with pytest.raises(TypeError, match="stepp"):
        f.update_status(stepp=3)
    with pytest.raises(TypeError):
        Status().update(nonsense=1)
    assert json.loads(f.status_path.read_text()) == {"state": "running", "pid": os.getpid()}  # untouched


def test_status_reads_like_a_mapping_for_existing_callers(tmp_path):
    st = Status(state="failed", step=4, advice="x")
    assert st["state"] == "failed" and st.get("step") == 4 and st.get("error") is None
    assert st.get("resumable", True) is True and "advice" in st and "error" not in st
    assert dict(st) == {"state": "failed", "step": 4, "advice": "x"}
    assert st.to_dict() == {"state": "failed", "step": 4, "advice": "x"}


@pytest.mark.parametrize("content, why", [
    ("[1, 2]", "expected a JSON object"),
    ('{"state": "running", "pid": "123"}', "pid is '123'"),
    ('{"state": "sleeping"}', "state is 'sleeping'"),
    ('{"state": "done", "step": "ten"}', "step is 'ten'"),
    (b'{"state": "done", "model": "\xff\xfe"}', "not UTF-8"),
    ('{"state": "do', "not valid JSON"),
])
def test_a_damaged_status_reads_as_unreadable_with_the_reason(tmp_path, content, why):
    f = make(tmp_path)
    if isinstance(content, bytes):
        f.status_path.write_bytes(content)
    else:
        f.status_path.write_text(content)
    with pytest.raises(DamagedFile):
        f.read_status_raw()
    st = f.status()
    assert st.state == "failed" and why in st.unreadable and st.error.startswith("unreadable:")
    assert st.resumable is False


def test_enclosing_run_of_a_checkpoint_an_adapter_and_an_export(tmp_path):
    f = make(tmp_path, status={"state": "done"})
    ckpt = f.checkpoints_dir / "checkpoint-4"
    ckpt.mkdir(parents=True)
    f.adapter.mkdir()
    (f.path / "export" / "merged16").mkdir(parents=True)
    for p in (f.path, ckpt, f.adapter, f.path / "export" / "merged16"):
        assert RunFolder.enclosing(p) == f
    assert RunFolder.enclosing(tmp_path) is None


def test_checkpoints_complete_and_with_adapter(tmp_path):
    f = make(tmp_path, status={"state": "done"})
    for step, state, adapter in ((5, True, True), (10, True, False), (15, False, True), (20, False, False)):
        p = f.checkpoints_dir / f"checkpoint-{step}"
        p.mkdir(parents=True)
        if state:
            (p / "trainer_state.json").write_text("{}")
        if adapter:
            (p / "adapter_config.json").write_text("{}")
    (f.checkpoints_dir / "checkpoint-x").mkdir()
    assert [c.step for c in f.checkpoints()] == [5, 10, 15, 20]
    assert [c.step for c in f.checkpoints(complete=True)] == [5, 10]
    assert [c.step for c in f.checkpoints(with_adapter=True)] == [5, 15]
    assert f.latest_checkpoint().name == "checkpoint-10"


def test_metrics_keep_one_line_per_step_the_later_wins(tmp_path):
    f = make(tmp_path, status={"state": "done"})
    lines = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4)] + [{"step": 4, "loss": None, "eval_loss": 0.9}]
    lines += [{"step": s, "loss": 0.5} for s in (3, 4, 5)]  # resumed from checkpoint-2
    with f.metrics.open("wb") as out:
        for row in lines:
            out.write((json.dumps(row) + "\n").encode())
        out.write(b'{"step": 6, "loss": "\xff"}\n[1, 2]\n"text"\n{"step": 7, "lo')
    rows = f.read_metrics()
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    assert train == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5), (5, 0.5)]
    assert [r["step"] for r in rows if r.get("eval_loss") is not None] == [4]


def test_read_json_policy(tmp_path):
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DamagedFile, match="bad.json.*not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    assert read_json(tmp_path / "list.json") == []
    with pytest.raises(DamagedFile, match="expected a JSON object, found a list"):
        read_json(tmp_path / "list.json", expect=dict)
