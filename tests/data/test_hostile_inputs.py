"""`python -m core mix` against malformed and hostile data files (written here, one per case).

Every case asserts the exit status, that the output names the file:line (or the setting) at fault,
that no traceback is printed, that the good rows are kept, and that the output folder is either
absent or complete (manifest written, row files whole, no hidden temporary folder left behind).
Cases run in-process through the CLI's main (fast); a few run as real subprocesses.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent


def chat(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"Question number {i}?"},
                         {"role": "assistant", "content": f"Answer number {i}."}], **extra}


def share(i: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"Hello {i}"}, {"from": "gpt", "value": f"Hi {i}!"}]}


def alpaca(i: int) -> dict:
    return {"instruction": f"Say {i}", "input": "", "output": f"{i}"}


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def good(n: int, start: int = 0, kind=chat) -> list:
    return [kind(i) for i in range(start, start + n)]


def parquet(columns: dict) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


ONE = "sources:\n  - path: {d}/data.jsonl\n    name: data\n"
PARQUET = "sources:\n  - path: {d}/data.parquet\n"
TOOLS = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]


def deep(n: int) -> str:
    return "[" * n + "]" * n


@dataclass
class Case:
    id: str
    files: dict  # name -> text or bytes
    rc: int = 0
    names: list = field(default_factory=list)  # substrings the output must hold (file:line, setting)
    kept: int | None = None  # rows in the mix
    mix: str = ONE
    args: list = field(default_factory=list)


CASES = [
    # --- one bad row must not decide how its neighbours are read
    Case("messages null first row", {"data.jsonl": lines({"messages": None}, *good(21))},
         names=["data.jsonl:1", "messages should be a list of turns, got null"], kept=21),
    Case("unreadable conversations string", {"data.jsonl": lines(*good(4, kind=share),
                                                                 {"conversations": "[{from: human"},
                                                                 *good(4, 4, share))},
         names=["data.jsonl:5", "invalid JSON field"], kept=8),
    Case("messages is an object", {"data.jsonl": lines(*good(3), {"messages": {"role": "user"}}, *good(3, 3))},
         names=["data.jsonl:4", "got dict"], kept=6),
    Case("messages is a number", {"data.jsonl": lines(*good(2), {"messages": 7}, *good(2, 2))},
         names=["data.jsonl:3", "got int"], kept=4),
    Case("messages is an empty list", {"data.jsonl": lines({"messages": []}, *good(3))},
         names=["data.jsonl:1", "empty field"], kept=3),
    Case("a row missing a column of its file's format", {"data.jsonl": lines(
        {"instruction": "no output"}, *good(3, kind=alpaca))},
         names=["data.jsonl:1", "needs a column 'output'", "read as alpaca, the format of the 3 good rows"], kept=3),
    Case("mixed formats in one file", {"data.jsonl": lines(*good(2), *good(2, 2, share), *good(2, 4, alpaca))},
         kept=6),
    Case("messages as JSON text", {"data.jsonl": lines({"messages": json.dumps(chat(1)["messages"])}, *good(2, 2))},
         kept=3),
    # --- per-row problems become counted drops
    Case("lone surrogate escape", {"data.jsonl": lines(*good(3), '{"messages": [{"role": "user", "content": '
                                                                 '"bad \\ud800 text"}, {"role": "assistant", '
                                                                 '"content": "x"}]}', *good(3, 3))},
         names=["data.jsonl:4", "broken UTF-8"], kept=6),
    Case("lone surrogate in tools string", {"data.jsonl": lines(
        *good(2), chat(9, tools='[{"name": "f\\udc80", "parameters": {}}]'), *good(2, 2))},
         names=["data.jsonl:3", "broken UTF-8"], kept=4),
    Case("JSON nested 100000 deep", {"data.jsonl": lines(*good(2), '{"messages": ' + deep(100_000) + "}",
                                                        *good(2, 2))},
         names=["data.jsonl:3", "nested too deep"], kept=4),
    Case("JSON array with a row nested 100000 deep", {"data.json": "[\n" + ",\n".join(
        [json.dumps(r) for r in good(2)] + ['{"messages": ' + deep(100_000) + "}"]
        + [json.dumps(r) for r in good(2, 2)]) + "\n]\n"},
         mix="sources:\n  - path: {d}/data.json\n", names=["data.json:4", "nested too deep"], kept=4),
    Case("tool arguments nested 500 deep", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "call"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {"a": json.loads(deep(500))}}]},
        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"}]})},
         names=["data.jsonl:3", "nested too deep"], kept=2),
    Case("integer with 5000 digits", {"data.jsonl": lines(*good(2), '{"messages": ' + "9" * 5000 + "}",
                                                         *good(2, 2))},
         names=["data.jsonl:3", "malformed JSON"], kept=4),
    Case("malformed JSON line", {"data.jsonl": lines(*good(2), '{"messages": [', *good(2, 2))},
         names=["data.jsonl:3", "malformed JSON"], kept=4),
    Case("broken UTF-8 bytes", {"data.jsonl": lines(*good(2)).encode() + b'{"instruction": "\xff\xfe", '
                                                                            b'"output": "x"}\n'
                                + lines(*good(2, 2)).encode()},
         names=["data.jsonl:3", "broken UTF-8"], kept=4),
    Case("a line that is not an object", {"data.jsonl": lines(*good(2), "[1, 2, 3]", "42", *good(2, 2))},
         names=["data.jsonl:3", "data.jsonl:4", "not a JSON object"], kept=4),
    Case("JSON array broken in the middle", {"data.json": "[\n" + ",\n".join(json.dumps(r) for r in good(3))
                                             + ",\n{\"messages\": [}\n]\n"},
         mix="sources:\n  - path: {d}/data.json\n", names=["data.json:5", "malformed JSON"], kept=3),
    Case("CSV row with the wrong field count", {"data.csv": 'instruction,input,output\n"Say a","","a"\n'
                                                            'only,two\n"Say b","","b"\n'},
         mix="sources:\n  - path: {d}/data.csv\n", names=["data.csv:3", "malformed CSV"], kept=2),
    Case("NaN as content", {"data.jsonl": lines(*good(2), '{"messages": [{"role": "user", "content": "q"}, '
                                                          '{"role": "assistant", "content": NaN}]}', *good(2, 2))},
         names=["data.jsonl:3", "NaN or Infinity"], kept=4),
    Case("Infinity as alpaca output", {"data.jsonl": lines(*good(2, kind=alpaca),
                                                           '{"instruction": "x", "output": Infinity}')},
         names=["data.jsonl:3", "NaN or Infinity"], kept=2),
    Case("NaN inside tool arguments", {"data.jsonl": lines(*good(2), '{"messages": [{"role": "user", "content": '
                                                                     '"c"}, {"role": "assistant", "content": "", '
                                                                     '"tool_calls": [{"name": "f", "arguments": '
                                                                     '{"x": NaN}}]}, {"role": "tool", "content": '
                                                                     '"1"}, {"role": "assistant", "content": "ok"}]}')},
         names=["data.jsonl:3", "NaN or Infinity"], kept=2),
    Case("NUL character", {"data.jsonl": lines(*good(2), chat(0) | {"messages": [
        {"role": "user", "content": "nul\x00here"}, {"role": "assistant", "content": "x"}]}, *good(2, 2))},
         names=["data.jsonl:3", "NUL character"], kept=4),
    Case("unknown role", {"data.jsonl": lines(*good(2), {"messages": [{"role": "narrator", "content": "x"},
                                                                      {"role": "assistant", "content": "y"}]})},
         names=["data.jsonl:3", "unknown role"], kept=2),
    Case("ends on a user turn", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]})},
         names=["data.jsonl:3", "ends without a reply"], kept=2),
    Case("tool result with no call", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "y"}]})},
         names=["data.jsonl:3", "misplaced tool result"], kept=2),
    Case("unclosed think", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "<think>never closed"}]})},
         names=["data.jsonl:3", "unclosed <think>"], kept=2),
    Case("tool call arguments not JSON", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{oops"}]},
        {"role": "tool", "content": "1"}, {"role": "assistant", "content": "y"}]})},
         names=["data.jsonl:3", "invalid tool call"], kept=2),
    Case("unsupported content part", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": [{"type": "image", "value": "a.png"}, {"type": "text", "value": "?"}]},
        {"role": "assistant", "content": "y"}]})},
         names=["data.jsonl:3", "unsupported content"], kept=2),
    Case("tool_call part in a user turn", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": [{"type": "tool_call", "value": '{"name": "f", "arguments": {}}'}]},
        {"role": "assistant", "content": "y"}]})},
         names=["data.jsonl:3", "invalid tool call"], kept=2),
    Case("tools that are not schemas", {"data.jsonl": lines(*good(2), chat(7, tools="[1, 2]"))},
         names=["data.jsonl:3", "invalid tools"], kept=2),
    Case("NaN where an optional field is missing", {"data.jsonl": lines(
        *good(2, kind=alpaca), '{"instruction": "Say x", "input": NaN, "output": "x", "system": NaN}')},
         names=["data.jsonl:3", "NaN read as empty", "kept"], kept=3),
    Case("CSV field longer than csv's default limit", {"data.csv": 'instruction,input,output\n"Say a","","'
                                                                   + "a" * 200_000 + '"\n"Say b","","b"\n'},
         mix="sources:\n  - path: {d}/data.csv\nmax_seq_len: 1000000\n", kept=2),
    Case("pretty-printed JSON array saved as .jsonl", {"data.jsonl": json.dumps(good(3), indent=2)}, kept=3),
    Case("one UTF-16 file in a folder", {"dir/a.jsonl": lines(*good(3)),
                                         "dir/b.jsonl": lines(*good(2, 5)).encode("utf-16")},
         mix="sources:\n  - path: {d}/dir\n", names=["b.jsonl", "UTF-16", "file skipped"], kept=3),
    Case("Parquet: an all-NaN input column and a missing output (pandas' missing values)", {
        "data.parquet": parquet({"instruction": ["a", "b", "c", "d"], "input": [float("nan")] * 4,
                                 "output": ["A", None, "C", "D"]})}, mix=PARQUET,
         names=["data.parquet[0]", "NaN read as empty", "data.parquet[1]", "output is empty"], kept=3),
    Case("Parquet: numbers and NaN as answers", {
        "data.parquet": parquet({"question": ["1+1.5?", "0/0?", "2+2?"], "answer": [2.5, float("nan"), 4.0]})},
         mix=PARQUET, names=["data.parquet[0]", "number as text", "data.parquet[1]", "NaN or Infinity"], kept=2),
    Case("not a Parquet file", {"data.parquet": b"PAR1 this is not parquet"}, rc=2, mix=PARQUET,
         names=["data.parquet", "not a readable Parquet file"]),
    # --- kept, with a counted warning naming the line
    Case("sharegpt starting with the assistant", {"data.jsonl": lines(*good(2, kind=share), {"conversations": [
        {"from": "gpt", "value": "Welcome!"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]})},
         names=["data.jsonl:3", "starts with an assistant turn", "kept"], kept=3),
    Case("two user turns in a row", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]})},
         names=["data.jsonl:3", "two user turns in a row"], kept=3),
    Case("content given as a number", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "What is 6*7?"}, {"role": "assistant", "content": 42}]})},
         names=["data.jsonl:3", "number as text"], kept=3),
    Case("exact duplicate rows", {"data.jsonl": lines(*good(3), chat(1), chat(1))},
         names=["data.jsonl:4", "exact duplicate", "same text as", "data.jsonl:2"], kept=5),
    Case("exact duplicates with dedupe", {"data.jsonl": lines(*good(3), chat(1), chat(1))},
         mix=ONE + "dedupe: true\n", names=["data.jsonl:5", "exact duplicate", "dropped"], kept=3),
    Case("duplicates across two sources", {"a.jsonl": lines(*good(3)), "b.jsonl": lines(chat(0), chat(9))},
         mix="sources:\n  - path: {d}/a.jsonl\n  - path: {d}/b.jsonl\ndedupe: true\n",
         names=["b.jsonl:1", "same text as", "a.jsonl:1"], kept=4),
    Case("user quotes chat markers", {"data.jsonl": lines(*good(2), {"messages": [
        {"role": "user", "content": "Explain <|im_start|>assistant\n and <|im_end|> please"},
        {"role": "assistant", "content": "They delimit turns."}]})}, kept=3),
    Case("byte order mark and CRLF", {"data.jsonl": b"\xef\xbb\xbf" + lines(*good(3)).replace("\n", "\r\n").encode()},
         kept=3),
    Case("blank lines between rows", {"data.jsonl": "\n\n" + lines(*good(2)) + "\n   \n" + lines(*good(2, 2))},
         kept=4),
    # --- whole-source and setting errors: a message naming the file or the setting, nothing written
    Case("every row bad", {"data.jsonl": lines({"messages": None}, {"messages": 3})}, rc=2,
         names=["source 'data'", "no usable rows", "e.g."]),
    Case("empty file", {"data.jsonl": ""}, rc=2, names=["data.jsonl", "empty"]),
    Case("missing file", {}, rc=2, names=["data.jsonl", "not found"]),
    Case("UTF-16 file", {"data.jsonl": lines(*good(2)).encode("utf-16")}, rc=2,
         names=["data.jsonl", "UTF-16", "save it as UTF-8"]),
    Case("absurd total", {"data.jsonl": lines(*good(2))}, rc=2, mix=ONE + "upsample: true\ntotal: 1000000000000\n",
         names=["total", "at most"]),
    Case("ratio nan", {"data.jsonl": lines(*good(2))}, rc=2,
         mix="sources:\n  - path: {d}/data.jsonl\n    ratio: .nan\n",
         names=["sources[0].ratio", "mix.yaml:3", "finite"]),
    Case("ratio inf", {"data.jsonl": lines(*good(2)), "b.jsonl": lines(*good(2, 5))}, rc=2,
         mix="sources:\n  - path: {d}/data.jsonl\n    ratio: 1\n  - path: {d}/b.jsonl\n    ratio: .inf\n",
         names=["sources[1].ratio", "mix.yaml:5", "finite"]),
    Case("ratio negative", {"data.jsonl": lines(*good(2))}, rc=2,
         mix="sources:\n  - path: {d}/data.jsonl\n    ratio: -1\n", names=["sources[0].ratio", "at least"]),
    Case("eval_fraction nan", {"data.jsonl": lines(*good(2))}, rc=2, mix=ONE + "eval_fraction: .nan\n",
         names=["eval_fraction", "finite"]),
    Case("unknown reasoning_turns", {"data.jsonl": lines(*good(2))}, rc=2, mix=ONE + "reasoning_turns: all\n",
         names=["reasoning_turns", "mix.yaml:4"]),
    Case("unknown setting", {"data.jsonl": lines(*good(2))}, rc=2, mix=ONE + "dedup: true\n",
         names=["dedup", "unknown setting", "mix.yaml:4", "did you mean 'dedupe'"]),
    Case("YAML syntax error", {"data.jsonl": lines(*good(2))}, rc=2, mix="sources: [\n  - path: x\n",
         names=["mix.yaml", "invalid YAML"]),
]


def run_mix(tmp_path: Path, case: Case, capsys, extra: list | None = None) -> tuple[int, str, Path]:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name, body in case.files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            p.write_bytes(body)
        else:
            p.write_text(body, encoding="utf-8")
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(case.mix.replace("{d}", str(d)), encoding="utf-8")
    out = tmp_path / "out" / "mix"
    capsys.readouterr()
    rc = main(["mix", str(cfg), "--out", str(out), "--tokenizer", "demo", *case.args, *(extra or [])])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err, out


def assert_folder(out: Path, rc: int, kept: int | None) -> None:
    leftovers = [p.name for p in out.parent.glob(".*")] if out.parent.exists() else []
    assert not leftovers, leftovers
    if rc != 0:
        assert not out.exists()
        return
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    rows = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == manifest["train_rows"] == manifest["total"]
    if kept is not None:
        assert manifest["total"] == kept


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path, capsys, demo_model_path):
    rc, output, out = run_mix(tmp_path, case, capsys)
    assert rc == case.rc, output
    assert "Traceback" not in output
    for name in case.names:
        assert name in output, (name, output)
    assert_folder(out, rc, case.kept)


def test_unreadable_file_is_a_clear_error(tmp_path, capsys, monkeypatch, demo_model_path):
    import core.data.sources as sources

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sources, "file_sha256", denied)
    rc, output, out = run_mix(tmp_path, Case("denied", {"data.jsonl": lines(*good(2))}), capsys)
    assert rc == 2 and "Traceback" not in output
    assert "data.jsonl" in output and "cannot read the file: Permission denied" in output
    assert_folder(out, rc, None)


def test_a_row_the_template_cannot_render_is_dropped_alone(tmp_path, capsys, monkeypatch, demo_model_path):
    import core.data.mix as mix

    real = mix.render_texts

    def fussy(convs, tokenizer):
        if any("boom" in m.content for c in convs for m in c.messages):
            raise TypeError("the template failed")
        return real(convs, tokenizer)

    monkeypatch.setattr(mix, "render_texts", fussy)
    rows = [*good(2), {"messages": [{"role": "user", "content": "boom"}, {"role": "assistant", "content": "x"}]},
            *good(2, 2)]
    rc, output, out = run_mix(tmp_path, Case("render", {"data.jsonl": lines(*rows)}), capsys)
    assert rc == 0 and "Traceback" not in output
    assert "cannot be rendered" in output and "data.jsonl:3" in output and "TypeError: the template failed" in output
    assert_folder(out, rc, 4)


def test_inline_mix_in_a_run_config_names_the_full_setting_path(tmp_path):
    from core.config import RunConfig
    from core.settings import ConfigError, load_yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  mix:\n    sources:\n      - path: samples/chat_en\n        ratio: .nan\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml(RunConfig, cfg)
    assert err.value.where == "data.mix.sources[0].ratio"
    assert f"{cfg}:5" in str(err.value) and "finite" in str(err.value)


def test_the_table_is_big_enough():
    assert len(CASES) >= 40


def test_json_report_lists_every_problem_of_a_source_once(tmp_path, capsys, demo_model_path):
    case = Case("json", {"data.jsonl": lines({"messages": None}, *good(3), '{"messages": [', chat(1),
                                              {"messages": [{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": 5}]})})
    rc, output, out = run_mix(tmp_path, case, capsys, ["--json"])
    assert rc == 0
    summary = json.loads(output[output.index("{"):])
    kinds = {(p["kind"], p["action"]): p for p in summary["problems"]}
    assert kinds[("invalid field", "dropped")]["examples"][0].endswith("data.jsonl:1: messages should be a list "
                                                                       "of turns, got null")
    assert kinds[("malformed JSON", "dropped")]["count"] == 1
    assert kinds[("exact duplicate", "kept")]["examples"][0].startswith(str(tmp_path / "data" / "data.jsonl") + ":6")
    assert kinds[("number as text", "kept")]["count"] == 1
    assert summary["total"] == 5


def test_disk_full_while_writing_names_the_need_and_removes_the_temporary_folder(tmp_path, capsys, monkeypatch,
                                                                                  demo_model_path):
    import core.data.mixdir as mixdir

    real = mixdir.write_rows

    def full(path, rows):
        real(path, rows[:1])  # part of the folder is on disk when the space runs out
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mixdir, "write_rows", full)
    case = Case("enospc", {"data.jsonl": lines(*good(5))})
    rc, output, out = run_mix(tmp_path, case, capsys)
    assert rc == 2 and "Traceback" not in output
    assert "the disk is full" in output and "MB are free in" in output and "the mix needs about" in output
    assert_folder(out, rc, None)


def test_disk_full_keeps_an_existing_mix_untouched(tmp_path, capsys, monkeypatch, demo_model_path):
    import core.data.mixdir as mixdir

    case = Case("enospc", {"data.jsonl": lines(*good(5))})
    rc, _output, out = run_mix(tmp_path, case, capsys)
    assert rc == 0
    before = (out / "train.jsonl").read_bytes()

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mixdir, "write_rows", full)
    rc, output, out = run_mix(tmp_path, case, capsys, ["--force", "--seed", "1"])
    assert rc == 2 and "the disk is full" in output
    assert (out / "train.jsonl").read_bytes() == before
    assert not [p.name for p in out.parent.glob(".*")]


SUBPROCESS = ["lone surrogate escape", "JSON nested 100000 deep", "ratio nan", "NaN as content"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS], ids=SUBPROCESS)
def test_hostile_input_as_a_real_subprocess(case: Case, tmp_path, demo_model_path):
    d = tmp_path / "data"
    d.mkdir()
    for name, body in case.files.items():
        (d / name).write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(case.mix.replace("{d}", str(d)), encoding="utf-8")
    out = tmp_path / "out" / "mix"
    proc = subprocess.run([sys.executable, "-m", "core", "mix", str(cfg), "--out", str(out), "--tokenizer", "demo"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == case.rc, output
    assert "Traceback" not in output
    for name in case.names:
        assert name in output, (name, output)
    assert_folder(out, proc.returncode, case.kept)
