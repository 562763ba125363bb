"""The CLI registry and the web server's start-up rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from core.serve import UnsafeLaunch, check_launch, is_loopback
from tests.conftest import ROOT, stop_process


def test_cli_help_lists_commands_and_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "core", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "demo-model" in out.stdout
    for heavy in ("torch", "transformers", "gradio", "unsloth"):
        assert f" {heavy}\n" not in out.stderr and f"| {heavy}\n" not in out.stderr, heavy


def test_cli_without_command_prints_help_and_fails():
    out = subprocess.run([sys.executable, "-m", "core"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "COMMAND" in out.stdout


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
def test_loopback_needs_no_auth(host):
    assert is_loopback(host)
    assert check_launch(host, share=False, auth=None) is None


@pytest.mark.parametrize("host,share", [("0.0.0.0", False), ("192.168.1.5", False), ("127.0.0.1", True)])
def test_exposure_without_auth_is_refused(host, share):
    with pytest.raises(UnsafeLaunch, match="--auth"):
        check_launch(host, share=share, auth=None)
    assert check_launch(host, share=share, auth="me:secret") == ("me", "secret")


def test_bad_auth_format_is_refused():
    with pytest.raises(UnsafeLaunch, match="user:password"):
        check_launch("0.0.0.0", share=False, auth="justuser")


def test_launch_refuses_public_host_without_auth():
    out = subprocess.run([sys.executable, "launch.py", "--host", "0.0.0.0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--auth" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_launch_serves_the_page_offline(tmp_path):
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "launch.py", "--demo", "--port", str(port), "--runs-dir",
                             str(tmp_path / "runs"), "--mixes-dir", str(tmp_path / "mixes")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        body = ""
        while time.time() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        assert "<html" in body.lower(), proc.stdout.read() if proc.poll() is not None else "no answer"
        assert "QwenTune" in body
    finally:
        stop_process(proc)
