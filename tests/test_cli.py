"""The command line as a user meets it: version, help, status, exit codes."""

from __future__ import annotations

import json

import pytest

from margo_lite import __version__


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"margo-lite {__version__}"


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "once", "status", "check-config"):
        assert command in result.stdout


def test_no_command_is_usage_error(cli):
    result = cli()
    assert result.returncode == 2
    assert "required" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_usage_error(cli):
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_status_json_on_fresh_state_dir(cli, config_file, tmp_path):
    result = cli("-c", str(config_file()), "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deployments"] == []
    assert report["device"] == "gw-test"
    assert report["agent"]["outbox"] == 0
    assert not (tmp_path / "state").exists()  # looking changes nothing


def test_status_table_on_fresh_state_dir(cli, config_file):
    result = cli("-c", str(config_file()), "status")
    assert result.returncode == 0, result.stderr
    assert "no deployments" in result.stdout


def test_status_reports_corrupt_state_instead_of_empty(cli, config_file, tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "agent.json").write_bytes(b"garbage")
    result = cli("-c", str(config_file()), "status", "--json")
    assert result.returncode == 1
    assert "STATE_CORRUPT" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_prints_no_secrets(cli, config_file, tmp_path):
    data = {
        "device": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
        "wos": {"url": "https://wos.example.com"},
        "git": {"url": "https://bot:hunter2-secret@git.example.com/gw.git?token=abc123xyz"},
    }
    result = cli("-c", str(config_file(data)), "check-config")
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert "abc123xyz" not in result.stdout + result.stderr
    assert "https://git.example.com/gw.git" in result.stdout


@pytest.mark.parametrize("api", ["draft", "v1"])
def test_demo_without_an_engine_says_what_is_missing_in_one_line(cli, tmp_path, api):
    # No engine CLI on PATH (and perhaps no static busybox): the demo cannot run here.
    result = cli("demo", "--api", api, env={"PATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[DEMO_NEEDS_UNMET]" in lines[0], result.stderr
    assert "install" in lines[0]
    assert result.stdout == ""
