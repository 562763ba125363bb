"""A small OpenAI-compatible chat endpoint over a loaded ChatEngine, on 127.0.0.1 only.

It lets OpenAI-API tools (EvalScope, scripts, the `openai` client) talk to both panes of the engine
without vLLM: model ``base`` is the base model (adapter off), model ``tuned`` the fine-tuned one.
``chat_template_kwargs.enable_thinking`` works as in vLLM; replies carry the answer in ``content``
and the reasoning in ``reasoning_content`` (vLLM's layout with ``--reasoning-parser qwen3``).
Streaming (``"stream": true``) sends server-sent events. Requests that arrive together (a client
sending several at once, as EvalScope does with ``eval_batch_size``) are decoded in one batch when
they share their sampling settings; each keeps its own seed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.chat.engine import CompareStream, sampling_key
from core.config import SamplingConfig


def _sampling(body: dict) -> SamplingConfig:
    kwargs = body.get("chat_template_kwargs") or {}
    thinking = kwargs.get("enable_thinking", True)
    temperature = body.get("temperature")
    return SamplingConfig(
        thinking=bool(thinking),
        temperature=None if temperature is None else float(temperature),
        top_p=None if body.get("top_p") is None else float(body["top_p"]),
        top_k=None if body.get("top_k") is None else int(body["top_k"]),
        min_p=None if body.get("min_p") is None else float(body["min_p"]),
        presence_penalty=float(body.get("presence_penalty") or 0.0),
        greedy=temperature is not None and float(temperature) == 0.0,
        max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 2048),
        seed=int(body.get("seed") or 0),
    )


def _messages(body: dict) -> tuple[list[dict], str]:
    system, msgs = "", []
    for m in body.get("messages") or []:
        content = m.get("content") or ""
        if isinstance(content, list):  # typed parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if m.get("role") == "system" and not msgs and not system:
            system = content
        elif m.get("role") in ("user", "assistant"):
            msgs.append({"role": m["role"], "content": content})
    return msgs, system


class _Coalescer:
    """Collects generations that arrive within ``window`` seconds and decodes them in one batch."""

    def __init__(self, max_batch: int = 16, window: float = 0.02):
        self.max_batch, self.window = max_batch, window
        self._cv = threading.Condition()
        self._pending: list[dict] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="qwentune-openai-batch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    def submit(self, gen):
        """Decode ``gen`` (with whatever else is waiting) and return its reply."""
        item = {"gen": gen, "done": threading.Event(), "error": None}
        with self._cv:
            self._pending.append(item)
            self._cv.notify()
        item["done"].wait()
        if item["error"] is not None:
            raise item["error"]
        return gen.reply

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if not self._pending:
                    return
            time.sleep(self.window)  # requests sent together arrive a few ms apart
            with self._cv:
                key = sampling_key(self._pending[0]["gen"].sampling)
                batch = [i for i in self._pending if sampling_key(i["gen"].sampling) == key][:self.max_batch]
                for item in batch:
                    self._pending.remove(item)
            try:
                for _ in CompareStream([i["gen"] for i in batch], groups=list(range(len(batch)))):
                    pass
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which raises it
                for item in batch:
                    item["error"] = exc
            finally:
                for item in batch:
                    item["done"].set()


class OpenAIServer:
    """``with OpenAIServer(engine) as server: ... server.url ...`` (port 0 picks a free port)."""

    def __init__(self, engine, host: str = "127.0.0.1", port: int = 0, on_request=None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the evaluation endpoint only binds to this machine (127.0.0.1)")
        self.engine = engine
        self.on_request = on_request  # called with the pane of each answered chat request
        self._batcher = _Coalescer()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _answered(self, pane: str) -> None:
        if self.on_request is not None:
            self.on_request(pane)

    def model_ids(self) -> list[str]:
        return list(self.engine.panes)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # keep the CLI's output clean
                return

            def _json(self, code: int, data: dict) -> None:
                payload = json.dumps(data, ensure_ascii=False).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, code: int, message: str) -> None:
                self._json(code, {"error": {"message": message, "type": "invalid_request_error"}})

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "owned_by": "qwentune"} for m in server.model_ids()]})
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}")
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                    pane = body.get("model") or "tuned"
                    if pane not in server.model_ids():
                        raise ValueError(f"unknown model {pane!r}; use one of {server.model_ids()}")
                    msgs, system = _messages(body)
                    gen = server.engine.stream(pane, msgs, _sampling(body), system=system)
                except (ValueError, TypeError, json.JSONDecodeError) as exc:
                    self._error(400, str(exc))
                    return
                rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
                if body.get("stream"):
                    self._stream(gen, rid, pane)
                    server._answered(pane)
                    return
                reply = server._batcher.submit(gen)
                server._answered(pane)
                self._json(200, {
                    "id": rid, "object": "chat.completion", "created": int(time.time()), "model": pane,
                    "choices": [{"index": 0, "finish_reason": "stop" if reply.finish_reason == "stop" else "length",
                                 "message": {"role": "assistant", "content": reply.answer,
                                             "reasoning_content": reply.reasoning or None}}],
                    "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.new_tokens,
                              "total_tokens": reply.prompt_tokens + reply.new_tokens},
                })

            def _stream(self, gen, rid: str, pane: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

                def send(delta: dict, finish: str | None = None) -> None:
                    chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": pane, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                    self.wfile.flush()

                sent_reasoning, sent_answer = 0, 0
                for _piece in gen:
                    split = gen.split(partial=True)
                    reasoning, answer = split.reasoning or "", split.answer
                    if len(reasoning) > sent_reasoning:
                        send({"reasoning_content": reasoning[sent_reasoning:]})
                        sent_reasoning = len(reasoning)
                    if len(answer) > sent_answer and not split.in_reasoning:
                        send({"content": answer[sent_answer:]})
                        sent_answer = len(answer)
                final = gen.reply.split
                if len(final.answer) > sent_answer:
                    send({"content": final.answer[sent_answer:]})
                send({}, "stop" if gen.reply.finish_reason == "stop" else "length")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler

    def start(self) -> OpenAIServer:
        self._batcher.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="qwentune-openai")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._batcher.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
