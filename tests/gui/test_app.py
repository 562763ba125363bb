"""The page frame: both languages served from one server, header content, safe and quiet start-up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

from gui.app import build_app, build_server
from gui.tabs import TABS
from tests.conftest import ROOT, stop_process

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth", "bitsandbytes",
         "plotly")


def test_each_language_builds_every_tab(tmp_path):
    for lang in ("en", "zh"):
        app = build_app(runs_dir=tmp_path / "runs", demo=True, lang=lang, mixes_dir=tmp_path / "mixes")
        ctx = app.qt_ctx
        assert ctx.lang == lang and ctx.t.lang == lang
        config = json.dumps(app.get_config_file(), ensure_ascii=False, default=str)
        tabs = [b["props"].get("elem_id") for b in app.get_config_file()["components"] if b["type"] == "tabitem"]
        assert tabs == [f"tab-{name}" for name in TABS]
        assert ctx.t("app.subtitle") in config and ctx.t("presets.title") in config
        assert 'id=\\"lang-en\\"' in config and '../zh/' in config


def test_server_serves_both_languages_and_redirects_root(tmp_path):
    from fastapi.testclient import TestClient

    server = build_server(runs_dir=tmp_path / "runs", demo=True, lang="zh", mixes_dir=tmp_path / "mixes")
    with TestClient(server) as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "./zh/"
        for lang, subtitle in (("en", "Fine-tune Qwen3"), ("zh", "微调 Qwen3")):
            page = client.get(f"/{lang}/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            config = client.get(f"/{lang}/config").json()
            assert config["title"] == "QwenTune"
            assert subtitle in json.dumps(config, ensure_ascii=False)
            assert config["analytics_enabled"] is False
        assert client.get("/fr/").status_code == 404
    pages = server.state.pages
    assert set(pages) == {"en", "zh"}
    assert pages["en"].qt_ctx.server is pages["zh"].qt_ctx.server  # one per process, not per page
    assert pages["en"].qt_ctx.shared is not pages["zh"].qt_ctx.shared
    # Per-process state lives there: one loaded model, one set of evaluation / export / download jobs.
    state = pages["zh"].qt_ctx.server
    assert {"chat.models", "evaluate.jobs", "evaluate.exports", "model_picker.jobs"} <= set(state)
    assert state["evaluate.jobs"].models is state["chat.models"]
    for key in ("chat.models", "evaluate.jobs", "evaluate.exports", "model_picker.jobs"):
        assert key not in pages["en"].qt_ctx.shared and key not in pages["zh"].qt_ctx.shared


def test_gpu_mode_banner_names_the_cards(tmp_path):
    app = build_app(runs_dir=tmp_path, demo=False, lang="en", gpu_names=["NVIDIA H100 80GB HBM3 (80 GiB)"])
    config = json.dumps(app.get_config_file(), default=str)
    assert "GPU mode" in config and "NVIDIA H100 80GB HBM3 (80 GiB)" in config


@pytest.mark.slow
def test_building_the_server_imports_no_heavy_library(tmp_path):
    code = (
        "import json, sys\n"
        "import launch\n"
        "launch.quiet_offline_env()\n"
        "from gui.app import build_server\n"
        f"build_server(runs_dir={str(tmp_path / 'runs')!r}, mixes_dir={str(tmp_path / 'mixes')!r}, demo=True)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], "imported at start-up; import it when first used"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loaded into the server process: records every outgoing connection or name lookup that is not
# loopback, so the test sees whether start-up (or serving the page) reaches the network.
GUARD = '''
import os, socket
_log = os.environ["QT_NET_LOG"]
def _note(what):
    with open(_log, "a") as f:
        f.write(repr(what) + "\\n")
def _local(host):
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "") or str(host).startswith("127.")
_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _note(("connect", address))
    return _connect(self, address)
socket.socket.connect = connect
_gai = socket.getaddrinfo
def getaddrinfo(host, *a, **k):
    if host is not None and not _local(host if isinstance(host, str) else host.decode()):
        _note(("getaddrinfo", host))
    return _gai(host, *a, **k)
socket.getaddrinfo = getaddrinfo
'''


@pytest.mark.slow
def test_public_host_with_auth_starts_asks_for_login_and_stays_offline(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    net_log = tmp_path / "net.log"
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(guard), QT_NET_LOG=str(net_log))
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # launch.py must turn analytics off by itself
    proc = subprocess.Popen([sys.executable, "launch.py", "--demo", "--host", "0.0.0.0", "--auth", "me:secret",
                             "--port", str(port), "--runs-dir", str(tmp_path / "runs"),
                             "--mixes-dir", str(tmp_path / "mixes")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/en/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "server did not answer"
                time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{base}/en/config", timeout=5)
        assert denied.value.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        form = urllib.parse.urlencode({"username": "me", "password": "secret"}).encode()
        opener.open(f"{base}/en/login", data=form, timeout=10)
        config = json.loads(opener.open(f"{base}/en/config", timeout=10).read())
        assert config["title"] == "QwenTune"
        time.sleep(1.0)  # give any background thread (version check, telemetry) time to try
    finally:
        stop_process(proc)
    assert not net_log.exists(), f"start-up reached the network: {net_log.read_text()}"


def test_no_code_hardwires_trust_remote_code():
    """Model code from the hub runs only when the user sets model.trust_remote_code."""
    offenders = []
    for folder in ("core", "gui"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "trust_remote_code=True" in text.replace(" ", ""):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_gpu_names_come_from_nvml_and_no_gpu_gives_none(monkeypatch):
    from core.hardware import detect as hw
    from gui.app import detect_gpu_names

    def fake(disk_path="."):
        return hw.HardwareReport(gpus=[hw.GpuInfo(index=0, name="NVIDIA GeForce RTX 3060", total_gib=11.76,
                                                  free_gib=11.0, used_gib=0.76)])

    monkeypatch.setattr(hw, "detect", fake)
    assert detect_gpu_names() == ["NVIDIA GeForce RTX 3060 (12 GiB)"]
    monkeypatch.setattr(hw, "detect", lambda disk_path=".": hw.HardwareReport(message=hw.NO_GPU))
    assert detect_gpu_names() == []
