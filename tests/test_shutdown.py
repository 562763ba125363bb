"""The web server exits promptly on SIGTERM while a browser tab holds a stream open, and the
training runs it started keep going (they are detached) and are found again by the next server."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.train.conftest import run_config, write_facts_mix

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/en/", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the server did not come up")


def test_sigterm_with_an_open_tab_exits_and_leaves_training_running(tmp_path, demo_model_path, monkeypatch):
    from core.train import runs

    facts_mix = write_facts_mix(tmp_path / "mix")

    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("QWENTUNE_STEP_DELAY_S", "0.5")  # a run that outlives the server by far
    run_dir = runs.start_run(run_config(demo_model_path, facts_mix, runs_dir, name="long", max_steps=400,
                                        save_steps=100, eval_steps=0), runs_dir)
    port = free_port()
    server = subprocess.Popen([sys.executable, "launch.py", "--demo", "--port", str(port), "--runs-dir",
                               str(runs_dir), "--mixes-dir", str(tmp_path / "mixes")], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_up(port, server)
        deadline = time.time() + 180
        while not (runs.read_status(run_dir).get("pid") and runs.read_status(run_dir).state == "running"):
            assert time.time() < deadline, runs.read_log_tail(run_dir)
            time.sleep(0.2)
        worker_pid = runs.read_status(run_dir).pid
        # What an open tab holds: Gradio's heartbeat event stream, which never ends by itself.
        tab = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        tab.request("GET", "/en/gradio_api/heartbeat/test-tab")
        stream = tab.getresponse()
        assert stream.status == 200 and "event-stream" in stream.getheader("content-type", "")
        t0 = time.time()
        os.killpg(server.pid, signal.SIGTERM)  # the server's whole process group, as a service manager does
        server.wait(timeout=10)
        assert time.time() - t0 < 10
        time.sleep(1.0)
        assert runs.pid_alive(worker_pid), "the training worker died with the server"
        assert runs.read_status(run_dir).state in ("running", "stopping")
        listed = [r for r in runs.list_runs(runs_dir) if r["name"] == "long"]
        assert listed and listed[0]["state"] == "running"  # what a new server lists: still re-attachable
    finally:
        if server.poll() is None:
            server.kill()
        pid = runs.read_status(run_dir).get("pid")
        if pid and runs.pid_alive(pid):
            runs.kill_run(run_dir)
