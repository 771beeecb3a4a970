"""The test environments themselves: what CI runs must be reproducible and complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import hypo

ROOT = Path(__file__).resolve().parent.parent


def test_ci_draws_the_same_hypothesis_examples_every_run():
    assert hypo.profile_name({"CI": "true"}) == "ci"
    assert hypo.profile_name({}) == "dev"
    assert hypo.profile_name({"CI": "1", "HYPOTHESIS_PROFILE": "hunt"}) == "hunt"
    assert settings.get_profile("ci").derandomize is True
    assert settings.get_profile("hunt").derandomize is False
    with pytest.raises(ValueError, match="HYPOTHESIS_PROFILE='fast'"):
        hypo.profile_name({"HYPOTHESIS_PROFILE": "fast"})
    assert 'HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"' in (ROOT / "tests" / "run").read_text()
    if os.environ.get("HYPOTHESIS_PROFILE") == "ci":  # as tests/run runs it
        assert settings.default.derandomize is True


def test_the_hunt_multiplies_every_property_test(monkeypatch):
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "hunt")
    monkeypatch.delenv("MARGO_LITE_FUZZ_SCALE", raising=False)
    assert hypo.examples(100) == 100 * hypo.HUNT_SCALE
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "ci")
    assert hypo.examples(100) == 100


def test_podman_compose_runs_in_this_environment():
    """Both venvs carry podman-compose (PyPI's, over Debian's own dependencies in
    .venv-debian), so the podman-compose backend tests run in both passes, not skip."""
    tool = Path(sys.executable).parent / "podman-compose"
    assert tool.exists(), f"{tool} missing: run tools/setup-host"
    out = subprocess.run([str(tool), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "podman-compose" in out.stdout + out.stderr, out.stderr
