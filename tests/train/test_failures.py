"""Training runs that fail: the run folder tells the truth afterwards (kind, advice, resumable)."""

from __future__ import annotations

from pathlib import Path


def test_a_network_failure_while_downloading_the_model_is_resumable_with_its_advice(
        tmp_path, monkeypatch, facts_mix):
    """The run's model is a hub id that cannot be fetched: status.json says network, resumable, and
    keeps the downloader's advice (not "fix the setting")."""
    from core.models.errors import HubUnreachable
    from core.train import runs, worker
    from tests.train.conftest import run_config

    def unreachable(name, **_kw):
        raise HubUnreachable("Cannot reach Hugging Face (huggingface.co): connection refused",
                             advice="Check the network, or use --hub modelscope; files already downloaded "
                                    "are kept.")

    import core.models

    monkeypatch.setattr(core.models, "resolve_model", unreachable)
    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")
    cfg = run_config("acme/Qwen3-Tiny", facts_mix, tmp_path / "runs", name="net")
    rc = worker.run(cfg)
    st = runs.read_status(Path(cfg.runs_dir) / "net")
    assert rc == worker.EXIT_FAILED
    assert st.state == "failed" and st.error_kind == "network" and st.resumable is True
    assert "Cannot reach Hugging Face" in st.error and "model.name_or_path" in st.error
    assert st.advice.startswith("Check the network, or use --hub modelscope")
    assert "Fix the setting" not in st.advice
