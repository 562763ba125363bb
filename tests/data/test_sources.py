"""Reading local files of every type, bad input per row with file:line, and the hub boundary
(mocked: this machine is offline, and offline must give a clear message, never a hang)."""

from __future__ import annotations

import json
import time

import pytest

from core.data import sources
from core.data.sources import DataError, Row, Skip, open_source

CHAT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}


def collect(path, **kw):
    rows, loc = open_source(str(path), **kw)
    return list(rows), loc


def test_jsonl_bad_lines_become_skips_with_line_numbers(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\n\n{broken\n[1, 2]\n"
                  + b'{"instruction": "\xff"}\n' + json.dumps(CHAT).encode() + b"\n")
    items, loc = collect(p)
    assert [type(i).__name__ for i in items] == ["Row", "Skip", "Skip", "Skip", "Row"]
    assert items[0].origin.endswith("d.jsonl:1") and items[4].origin.endswith("d.jsonl:6")
    assert [(s.origin.rsplit(":", 1)[1], s.reason) for s in items if isinstance(s, Skip)] == [
        ("3", "malformed JSON"), ("4", "not a JSON object"), ("5", "broken UTF-8")]
    assert loc.kind == "local" and len(loc.files[0].sha256) == 64


def test_json_array_rows_know_their_lines(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"instruction": "a", "output": "b"},\n  "oops",\n  {"instruction": "c",\n   "output": "d"}\n]\n')
    items, _ = collect(p)
    assert [(type(i).__name__, i.origin.rsplit(":", 1)[1]) for i in items] == [
        ("Row", "2"), ("Skip", "3"), ("Row", "4")]


def test_json_object_holding_rows_and_json_lines_named_json(tmp_path):
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"version": 1, "data": [CHAT, CHAT]}))
    items, _ = collect(p)
    assert len(items) == 2 and all(isinstance(i, Row) for i in items)
    q = tmp_path / "lines.json"
    q.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n")
    assert len(collect(q)[0]) == 2


def test_json_syntax_error_keeps_the_rows_before_and_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"a": 1},\n {"a": 2,,}\n]')
    items, _ = collect(p)
    assert isinstance(items[0], Row) and items[0].data == {"a": 1}
    assert isinstance(items[1], Skip) and items[1].reason == "malformed JSON"
    assert items[1].origin.endswith("bad.json:3") and "rest of the file" in items[1].detail


def test_json_broken_utf8_row_is_skipped(tmp_path):
    p = tmp_path / "u.json"
    p.write_bytes(b'[{"instruction": "ok", "output": "fine"},\n {"instruction": "\xc3(", "output": "x"}]')
    items, _ = collect(p)
    assert isinstance(items[0], Row) and isinstance(items[1], Skip) and items[1].reason == "broken UTF-8"


def test_csv_rows_and_bad_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('instruction,input,output\n"Say hi","","Hi"\nonly,two\n"multi\nline","","ok"\n', encoding="utf-8")
    items, _ = collect(p)
    assert isinstance(items[0], Row) and items[0].data == {"instruction": "Say hi", "input": "", "output": "Hi"}
    assert isinstance(items[1], Skip) and items[1].origin.endswith(":3") and items[1].reason == "malformed CSV"
    assert isinstance(items[2], Row) and items[2].origin.endswith(":4")


def test_parquet_rows_use_row_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b"], "output": ["x", "y"]}), p)
    items, _ = collect(p)
    assert [i.origin.rsplit("[", 1)[1] for i in items] == ["0]", "1]"]
    assert items[1].data == {"instruction": "b", "output": "y"}


def test_not_parquet_is_a_clear_error(tmp_path):
    p = tmp_path / "fake.parquet"
    p.write_text("hello")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        collect(p)


def test_folder_reads_every_data_file_and_reports_empty_ones(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(CHAT) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.jsonl").write_text("ignored")
    items, loc = collect(tmp_path, limit=0)
    assert len(items) == 3
    assert [f.path.rsplit("/", 1)[-1] for f in loc.files] == ["a.jsonl", "empty.jsonl", "b.jsonl"]
    assert any("empty file" in w for w in loc.warnings)


def test_limit_counts_rows_read(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(CHAT) + "\n" for _ in range(10)))
    assert len(collect(p, limit=3)[0]) == 3


def test_empty_file_and_missing_path_are_clear_errors(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        collect(p)
    with pytest.raises(DataError, match="not found"):
        collect(tmp_path / "nope.jsonl")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="holds no"):
        collect(empty_dir)
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        collect(bad)


def test_samples_resolve_and_exist():
    names = sources.list_samples()
    for expected in ["samples/math_reasoning", "samples/chat_en", "samples/chat_zh", "samples/function_calling",
                     "samples/function_calling_sharegpt", "samples/alpaca_zh"]:
        assert expected in names
    assert sources.sample_path("samples/math_reasoning") == sources.SAMPLES_DIR / "math_reasoning.jsonl"
    items, loc = collect("samples/chat_en")
    assert loc.kind == "sample" and 20 <= len(items) <= 60
    with pytest.raises(DataError, match="no shipped sample"):
        collect("samples/nope")


def test_source_kind():
    assert sources.source_kind("samples/chat_en") == "sample"
    assert sources.source_kind("unsloth/OpenMathReasoning-mini") == "hf"
    assert sources.source_kind("org/name", hub="modelscope") == "modelscope"
    assert sources.source_kind("ms://org/name") == "modelscope"
    assert sources.source_kind("data/train.jsonl") == "local"  # a missing file, not a hub id


# ------------------------------------------------------------------------------ hub boundary
def test_hf_offline_is_a_fast_clear_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "http_get", lambda url, timeout=5, headers=None: (0, b"Name or service not known"))
    t = time.monotonic()
    with pytest.raises(DataError) as exc:
        collect("unsloth/OpenMathReasoning-mini", split="cot")
    assert time.monotonic() - t < 5
    msg = str(exc.value)
    assert "unsloth/OpenMathReasoning-mini" in msg and "Hugging Face" in msg and "offline" in msg


def test_hf_real_call_offline_here_is_clear_and_quick(monkeypatch):
    """No mock: this machine has no hub, so the real code path must answer quickly and clearly."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "HUB_TIMEOUT_S", 2.0)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    t = time.monotonic()
    with pytest.raises(DataError, match="mlabonne/FineTome-100k"):
        collect("mlabonne/FineTome-100k")
    assert time.monotonic() - t < 10


def test_hf_unknown_dataset_is_named(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "http_get", lambda url, timeout=5, headers=None: (404, b""))
    with pytest.raises(DataError, match="'nobody/nothing' was not found"):
        collect("nobody/nothing")


def test_http_probe_never_hangs_on_a_silent_server():
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the connection, never answers: like a network that swallows traffic
    try:
        t = time.monotonic()
        why = sources.probe(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=0.5)
        assert why is not None and time.monotonic() - t < 3
    finally:
        server.close()


def test_hf_rows_streamed_with_limit_through_the_boundary():
    calls = {}

    def fake_hf(dataset, subset, split, limit):
        calls.update(dataset=dataset, subset=subset, split=split, limit=limit)
        return iter([dict(CHAT) for _ in range(10)]), "abc123"

    rows, loc = open_source("mlabonne/FineTome-100k", split="train", limit=4,
                            loaders={"hf": fake_hf, "modelscope": None})
    items = list(rows)
    assert len(items) == 4 and items[3].origin == "mlabonne/FineTome-100k[3]"
    assert calls == {"dataset": "mlabonne/FineTome-100k", "subset": "", "split": "train", "limit": 4}
    assert loc.to_json() == {"kind": "hf", "id": "mlabonne/FineTome-100k", "subset": "", "split": "train",
                             "revision": "abc123", "limit": 4}


def test_hub_library_errors_name_the_dataset():
    def broken(dataset, subset, split, limit):
        raise ValueError("Unknown split 'cott'")

    with pytest.raises(DataError, match=r"Hugging Face dataset 'a/b'.*split cott.*Unknown split"):
        open_source("a/b", split="cott", loaders={"hf": broken})


def test_modelscope_missing_package_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_modelscope(name, *args, **kwargs):
        if name.startswith("modelscope"):
            raise ImportError("No module named 'modelscope'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_modelscope)
    with pytest.raises(DataError, match="pip install modelscope"):
        collect("AI-ModelScope/alpaca-gpt4-data-zh", hub="modelscope")


def test_modelscope_offline_is_a_clear_error(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("modelscope.msdatasets")

    class MsDataset:
        @staticmethod
        def load(*args, **kwargs):
            raise AssertionError("must not be called offline")

    fake.MsDataset = MsDataset
    monkeypatch.setitem(sys.modules, "modelscope", types.ModuleType("modelscope"))
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", fake)
    monkeypatch.setattr("core.net.http_get", lambda url, timeout=5, headers=None: (0, b"timed out"))
    with pytest.raises(DataError, match="ModelScope.*AI-ModelScope/alpaca-gpt4-data-zh.*offline"):
        collect("AI-ModelScope/alpaca-gpt4-data-zh", hub="modelscope")
