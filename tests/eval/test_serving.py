"""Serving commands, the OpenAI-compatible endpoint, and the optional EvalScope hook."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

from core.chat.engine import ChatEngine
from core.eval.serving import client_snippet, find_servables, serve_command, serving_for_run, vllm_lora_rank
from tests.chat.mocks import ByteTokenizer, ScriptLM


def test_vllm_lora_rank_rounds_up():
    assert [vllm_lora_rank(r) for r in (1, 8, 9, 32, 33, 300)] == [8, 8, 16, 32, 64, 320]
    with pytest.raises(ValueError):
        vllm_lora_rank(1024)


def test_commands_for_adapter_and_exports(fake_run, tmp_path):
    run = shutil.copytree(fake_run, tmp_path / "run")
    merged = run / "export" / "merged16"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"")
    q4 = run / "export" / "merged4"
    q4.mkdir()
    (q4 / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    (q4 / "model.safetensors").write_bytes(b"")
    (run / "export" / "gguf").mkdir()
    (run / "export" / "gguf" / "model-Q4_K_M.gguf").write_bytes(b"")
    kinds = {s.kind: s for s in find_servables(run)}
    assert set(kinds) == {"lora", "merged16", "merged4", "gguf"}
    items = {i["kind"]: i for i in serving_for_run(run, name="mytune", port=8001)}
    lora = items["lora"]["command"]
    rank = json.loads((run / "adapter" / "adapter_config.json").read_text())["r"]
    assert lora.startswith("vllm serve ") and "--enable-lora" in lora
    assert f"--lora-modules mytune={run / 'adapter'}" in lora and f"--max-lora-rank {vllm_lora_rank(rank)}" in lora
    assert "--reasoning-parser qwen3" in lora and "--port 8001" in lora and "--host 127.0.0.1" in lora
    # the demo base is served from its local folder (the run trained on it)
    status = json.loads((run / "status.json").read_text())
    assert lora.split()[2] == status["model_path"]
    assert items["merged16"]["command"].startswith(f"vllm serve {merged} --served-model-name mytune")
    assert "--quantization bitsandbytes" in items["merged4"]["command"]
    assert items["gguf"]["command"].startswith("llama-server -m ") and "--jinja" in items["gguf"]["command"]


def test_catalog_base_is_served_from_the_original_16bit_repo():
    pytest.importorskip("core.models.resolve")
    from core.eval.serving import base_for_serving

    assert base_for_serving("qwen3-8b") == "Qwen/Qwen3-8B"
    assert base_for_serving("someone/their-model") == "someone/their-model"


def test_client_snippet_is_valid_python_with_thinking_switch():
    for thinking in (True, False):
        code = client_snippet(name="m", port=9000, thinking=thinking)
        compile(code, "<snippet>", "exec")
        assert f'"chat_template_kwargs": {{"enable_thinking": {thinking}}}' in code
        assert 'base_url="http://127.0.0.1:9000/v1"' in code
    assert "temperature=0.6" in client_snippet(thinking=True) and "top_p=0.8" in client_snippet(thinking=False)


def test_serve_command_needs_a_base_for_an_adapter(fake_run):
    (s,) = [s for s in find_servables(fake_run) if s.kind == "lora"]
    with pytest.raises(ValueError, match="base model"):
        serve_command(s)


def _script(prompt: str) -> str:
    if prompt.endswith("</think>\n\n"):
        return "Four."
    return "<think>\n2 + 2 = 4\n</think>\n\nFour."


def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def test_openai_endpoint_both_panes_thinking_and_stream():
    from core.eval.openai_server import OpenAIServer

    engine = ChatEngine(ScriptLM(_script), ByteTokenizer(), tuned_model=ScriptLM(lambda p: "tuned!"))
    with OpenAIServer(engine) as server:
        assert server.url.startswith("http://127.0.0.1:")
        models = json.loads(urllib.request.urlopen(server.url + "/models", timeout=30).read())
        assert [m["id"] for m in models["data"]] == ["base", "tuned"]
        msgs = [{"role": "user", "content": "2+2?"}]
        on = json.loads(_post(server.url + "/chat/completions", {"model": "base", "messages": msgs}))
        msg = on["choices"][0]["message"]
        assert msg["content"] == "Four." and msg["reasoning_content"] == "2 + 2 = 4"
        off = json.loads(_post(server.url + "/chat/completions", {
            "model": "base", "messages": msgs, "chat_template_kwargs": {"enable_thinking": False}}))
        assert off["choices"][0]["message"]["reasoning_content"] is None
        tuned = json.loads(_post(server.url + "/chat/completions", {"model": "tuned", "messages": msgs}))
        assert tuned["choices"][0]["message"]["content"] == "tuned!"
        raw = _post(server.url + "/chat/completions", {"model": "base", "messages": msgs, "stream": True}).decode()
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content", "") for e in events)
        assert content == "Four." and reasoning.strip() == "2 + 2 = 4" and raw.rstrip().endswith("[DONE]")
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(server.url + "/chat/completions", {"model": "nope", "messages": msgs})
        assert err.value.code == 400


def test_endpoint_refuses_other_hosts():
    from core.eval.openai_server import OpenAIServer

    with pytest.raises(ValueError, match="127.0.0.1"):
        OpenAIServer(object(), host="0.0.0.0")


FAKE_EVALSCOPE = """
import json, os, urllib.request

class TaskConfig:
    def __init__(self, **kw):
        self.kw = kw

def run_task(task_cfg):
    kw = task_cfg.kw
    # the endpoint is live while EvalScope runs: ask it as EvalScope would, with the task's settings
    body = {"model": kw["model"], "messages": [{"role": "user", "content": "2+2?"}],
            "max_tokens": kw["generation_config"]["max_tokens"], **kw["generation_config"]["extra_body"]}
    req = urllib.request.Request(kw["api_url"] + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(req, timeout=30).read())
    text = reply["choices"][0]["message"]["content"]
    for name in kw["datasets"]:
        folder = os.path.join(kw["work_dir"], "reports", kw["model"])
        os.makedirs(folder, exist_ok=True)
        report = {"dataset_name": name, "metrics": [{"identity": {"name": "acc"}, "score": len(text) / 100}],
                  "primary_metric_identity": {"name": "acc"}, "seen": text}
        json.dump(report, open(os.path.join(folder, name + ".json"), "w"))
"""


def test_evalscope_hook_skips_cleanly_and_drives_a_fake_evalscope(monkeypatch, tmp_path):
    """EvalScope's process talks to the live endpoint for each pane and mode; its reports become scores."""
    from core.config import EvalConfig
    from core.eval.evalscope_hook import run_evalscope

    engine = ChatEngine(ScriptLM(_script), ByteTokenizer(), tuned_model=ScriptLM(lambda p: "tuned!"))
    cfg = EvalConfig(evalscope_datasets=["gsm8k"], evalscope_limit=1, evalscope_python=str(tmp_path / "none"))
    assert "requirements-eval.txt" in run_evalscope(engine, cfg, work_dir=tmp_path / "w0")["skipped"]

    fake = tmp_path / "fake"
    (fake / "evalscope").mkdir(parents=True)
    (fake / "evalscope" / "__init__.py").write_text(FAKE_EVALSCOPE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    cfg = EvalConfig(evalscope_datasets=["gsm8k"], evalscope_limit=1, evalscope_thinking="both")
    out = run_evalscope(engine, cfg, work_dir=tmp_path / "w1")
    assert "error" not in out, out.get("error")
    assert out["scores"]["off"] == {"base": {"gsm8k": 0.05}, "tuned": {"gsm8k": 0.06}}  # "Four.", "tuned!"
    assert out["scores"]["on"] == out["scores"]["off"] and out["requests"] == 4


def test_a_cancel_during_evalscope_stops_its_process(monkeypatch, tmp_path):
    from core.config import EvalConfig
    from core.eval.evalscope_hook import run_evalscope

    class Stop(Exception):
        pass

    def progress(stage, done, total):
        raise Stop()

    fake = tmp_path / "fake"
    (fake / "evalscope").mkdir(parents=True)
    (fake / "evalscope" / "__init__.py").write_text(FAKE_EVALSCOPE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    engine = ChatEngine(ScriptLM(_script), ByteTokenizer(), tuned_model=ScriptLM(lambda p: "tuned!"))
    with pytest.raises(Stop):
        run_evalscope(engine, EvalConfig(evalscope_datasets=["gsm8k"], evalscope_limit=1), work_dir=tmp_path / "w",
                      progress=progress)


def test_requests_sent_together_are_decoded_in_one_batch():
    import threading

    from core.eval.openai_server import OpenAIServer

    calls = []

    class Recording(ScriptLM):
        def __call__(self, input_ids, *a, **k):
            calls.append(input_ids.shape[0])
            return super().__call__(input_ids, *a, **k)

    engine = ChatEngine(Recording(lambda p: "answer " + p.rsplit("question ", 1)[-1][:1]), ByteTokenizer())
    replies = {}
    with OpenAIServer(engine) as server:
        def ask(i):
            body = {"model": "base", "messages": [{"role": "user", "content": f"question {i}"}], "temperature": 0,
                    "seed": i}
            replies[i] = json.loads(_post(server.url + "/chat/completions", body))["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(calls) > 1  # at least two requests shared a forward pass
    assert replies == {i: f"answer {i}" for i in range(4)}  # each row got its own reply
