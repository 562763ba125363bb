"""The browser test may skip for a missing Chromium on a developer machine, never in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import conftest as e2e


def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setattr(e2e, "CHROMIUM", Path(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        e2e.require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        e2e.require_chromium()


def test_ci_script_installs_chromium_and_runs_the_one_test_command():
    script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "apt-get install" in script and "chromium" in script
    assert 'export CI="${CI:-true}"' in script
    assert script.rstrip().splitlines()[-1].startswith("make test")
