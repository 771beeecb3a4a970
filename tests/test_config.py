"""Configuration: the documented keys load, and every mistake is one clear line with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from margo_lite import config, schedule
from margo_lite.devkit.svidca import SvidCA
from margo_lite.errors import ConfigError
from tests.conftest import base_config


def test_minimal_config_takes_documented_defaults(config_file, tmp_path):
    cfg = config.load_config(config_file())
    assert cfg.device.id == "gw-test"
    assert cfg.git.branch == "main"
    assert cfg.git.path == ""
    assert cfg.poll.interval == 60.0
    assert cfg.poll.hours == ()
    assert cfg.runtime.engine == "auto"
    assert cfg.runtime.compose == "auto"
    assert cfg.wos.ca_file is None
    assert cfg.state_dir == tmp_path / "state"


def test_full_example_from_issue_loads(config_file, tmp_path):
    data = base_config(tmp_path)
    data["wos"].update(token_url="https://wos.example.com/token", client_id="gw-test")
    data["git"].update(branch="prod", path="devices/gw", username="bot", token_file="token")
    data["poll"] = {
        "interval": "5m",
        "hours": ["06:00-22:00"],
        "downtime": ["Sat 22:00-Sun 04:00", "01:00-02:00", "2026-12-24T18:00-2026-12-27T06:00"],
    }
    data["runtime"] = {"engine": "podman", "compose": "builtin"}
    cfg = config.load_config(config_file(data))
    assert cfg.poll.interval == 300.0
    assert cfg.poll.hours == (schedule.DailyWindow(360, 1320),)
    assert isinstance(cfg.poll.downtime[0], schedule.WeeklyWindow)
    assert isinstance(cfg.poll.downtime[1], schedule.DailyWindow)
    assert isinstance(cfg.poll.downtime[2], schedule.DatedWindow)
    # relative paths start at the configuration file's folder
    assert cfg.git.token_file == str(tmp_path / "token")


def test_environment_variable_names_the_file(config_file, cli):
    path = config_file()
    result = cli("check-config", env={"MARGO_LITE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout


def test_command_line_option_wins_over_environment(config_file, cli, tmp_path):
    good = config_file()
    result = cli(
        "-c", str(good), "check-config", env={"MARGO_LITE_CONFIG": str(tmp_path / "missing.yaml")}
    )
    assert result.returncode == 0, result.stderr


def _with(tmp_path: Path, section: str, key: str, value) -> dict:
    data = base_config(tmp_path)
    data.setdefault(section, {})[key] = value
    return data


def _without(tmp_path: Path, section: str, key: str) -> dict:
    data = base_config(tmp_path)
    del data[section][key]
    return data


MISTAKES = {
    # name: (build the config (dict or text), text the error line must contain)
    "missing device id": (lambda t: _without(t, "device", "id"), "device.id: required"),
    "missing wos url": (lambda t: _without(t, "wos", "url"), "wos.url: required"),
    "missing git url": (lambda t: _without(t, "git", "url"), "git.url: required"),
    "unknown key": (lambda t: _with(t, "git", "brnach", "main"), "git.brnach: unknown key"),
    "unknown section": (lambda t: {**base_config(t), "pol": {}}, "pol: unknown section"),
    "wrong type": (lambda t: _with(t, "git", "branch", ["main"]), "git.branch: expected a string"),
    "bad duration": (lambda t: _with(t, "poll", "interval", "5x"), "poll.interval: bad duration"),
    "zero interval": (lambda t: _with(t, "poll", "interval", 0), "poll.interval: must be more"),
    "bad polling hours": (
        lambda t: _with(t, "poll", "hours", ["25:00-26:00"]),
        "poll.hours: item 1: bad time window",
    ),
    "bad downtime": (
        lambda t: _with(t, "poll", "downtime", ["Sat 22:00-Sun"]),
        "poll.downtime: item 1: bad time window",
    ),
    "bad day": (
        lambda t: _with(t, "poll", "downtime", ["Xyz 22:00-Sun 04:00"]),
        "poll.downtime: item 1: bad day",
    ),
    "bad engine": (
        lambda t: _with(t, "runtime", "engine", "lxc"),
        "runtime.engine: expected one of auto, podman, docker",
    ),
    "compose driver of another engine": (
        lambda t: {**base_config(t), "runtime": {"engine": "podman", "compose": "docker-compose"}},
        "runtime.compose: compose driver docker-compose works with engine docker",
    ),
    "bad wos scheme": (lambda t: _with(t, "wos", "url", "ftp://wos"), "wos.url: expected a http"),
    "bad device id": (lambda t: _with(t, "device", "id", "../etc"), "device.id: '../etc'"),
    "section not a mapping": (
        lambda t: {**base_config(t), "poll": [1]},
        "poll: expected a mapping",
    ),
    "not yaml": (lambda t: "device: [unclosed\n", "line 2"),
    "duplicate key": (lambda t: "device:\n  id: a\n  id: b\n", "duplicate key 'id'"),
    "not a mapping at all": (lambda t: "- just\n- a list\n", "expected a mapping of sections"),
    "unreadable referenced file": (
        lambda t: _with(t, "wos", "ca_file", str(t / "nope.pem")),
        "wos.ca_file: cannot read",
    ),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_config_mistake_is_one_clear_line_and_exit_2(name, config_file, cli, tmp_path):
    _one_clear_line_and_exit_2(*MISTAKES[name], config_file, cli, tmp_path)


def _one_clear_line_and_exit_2(build, expected, config_file, cli, tmp_path):
    path = config_file(build(tmp_path))
    result = cli("-c", str(path), "check-config")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"margo-lite: {path}"), lines[0]
    assert expected in lines[0]
    assert "[CONFIG_INVALID]" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_config_file_is_one_line_and_exit_2(cli, tmp_path):
    result = cli("-c", str(tmp_path / "none.yaml"), "status")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"margo-lite: {tmp_path / 'none.yaml'}: configuration file not found [CONFIG_INVALID]"
    )


def test_unreadable_config_file_is_one_line_and_exit_2(cli, tmp_path):
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    result = cli("-c", str(folder), "check-config")
    assert result.returncode == 2
    assert "cannot read configuration file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_parse_config_is_pure_and_names_key():
    with pytest.raises(ConfigError) as err:
        config.parse_config(
            {
                "device": {"id": "x"},
                "wos": {"url": "http://w"},
                "git": {"url": "/r", "timeout": "soon"},
            },
            source="mem",
        )
    assert err.value.key == "git.timeout"
    assert err.value.source == "mem"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64KiB", 64 << 10),
        ("512MiB", 512 << 20),
        ("2G", 2 << 30),
        (1000, 1000),
        ("10", 10),
    ],
)
def test_sizes(text, expected):
    assert config.size(text, None) == expected


def _v1(tmp_path: Path, **wos) -> dict:
    """A Margo 1.0 configuration: mutual TLS, desired state from the WOS, no git section."""
    data = base_config(tmp_path)
    del data["git"]
    data["wos"] = {"api": "v1", "url": "https://wfm.example:3003/margo", "client_cert": "svid.pem"}
    data["wos"].update(wos)
    return data


def test_v1_needs_no_git_section_and_check_config_says_where_the_state_comes_from(
    config_file, cli, tmp_path
):
    issued = SvidCA(tmp_path / "trust-domain").device("gw-test")
    (tmp_path / "svid.pem").write_bytes(issued.cert.read_bytes() + issued.key.read_bytes())
    (tmp_path / "svid.pem").chmod(0o600)
    path = config_file(_v1(tmp_path, server_id="spiffe://example.org/margo/wfm/wfm-1"))
    cfg = config.load_config(path)
    assert (cfg.wos.api, cfg.desired.source, cfg.git) == ("v1", "wos", None)
    assert cfg.wos.server_id == "spiffe://example.org/margo/wfm/wfm-1"
    result = cli("-c", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert "desired state from the WOS (wos.api: v1)" in result.stdout
    assert "expects the WFM spiffe://example.org/margo/wfm/wfm-1" in result.stdout


def test_desired_source_follows_the_api_unless_set(config_file, tmp_path):
    assert config.load_config(config_file()).desired.source == "git"
    data = _v1(tmp_path)
    data["git"] = base_config(tmp_path)["git"]
    data["desired"] = {"source": "git"}
    cfg = config.load_config(config_file(data))
    assert (cfg.desired.source, cfg.git.url) == ("git", str(tmp_path / "repo.git"))


def test_settle_window_is_a_duration_defaulting_to_one_second(config_file, tmp_path):
    assert config.load_config(config_file()).runtime.settle == 1.0
    cfg = config.load_config(config_file(_with(tmp_path, "runtime", "settle", "250ms")))
    assert cfg.runtime.settle == 0.25


NEW_KEY_MISTAKES = {
    "api unknown": (lambda t: _with(t, "wos", "api", "v2"), "wos.api: expected one of draft, v1"),
    "server id not spiffe": (
        lambda t: _v1(t, server_id="https://wfm.example"),
        "wos.server_id: 'https://wfm.example' is not a SPIFFE ID (it must start with spiffe://)",
    ),
    "server id bad segment": (
        lambda t: _v1(t, server_id="spiffe://example.org/margo//wfm"),
        "wos.server_id: 'spiffe://example.org/margo//wfm': bad path segment ''",
    ),
    "server id bad trust domain": (
        lambda t: _v1(t, server_id="spiffe://Example.ORG/wfm"),
        "wos.server_id: 'spiffe://Example.ORG/wfm': bad trust domain 'Example.ORG'",
    ),
    "server id not a string": (
        lambda t: _v1(t, server_id=["spiffe://example.org/wfm"]),
        "wos.server_id: expected a string",
    ),
    "server id with draft": (
        lambda t: _with(t, "wos", "server_id", "spiffe://example.org/margo/wfm/w"),
        "wos.server_id: only used with wos.api: v1",
    ),
    "source unknown": (
        lambda t: {**base_config(t), "desired": {"source": "svn"}},
        "desired.source: expected one of git, wos, got 'svn'",
    ),
    "git source without git section": (
        lambda t: {k: v for k, v in base_config(t).items() if k != "git"},
        "git: required section is missing (desired.source is git)",
    ),
    "v1 git source without git section": (
        lambda t: {**_v1(t), "desired": {"source": "git"}},
        "git: required section is missing (desired.source is git)",
    ),
    "wos source with draft": (
        lambda t: {**base_config(t), "desired": {"source": "wos"}},
        "desired.source: wos needs wos.api: v1",
    ),
    "v1 over http": (
        lambda t: _v1(t, url="http://wfm.example"),
        "wos.url: wos.api v1 needs an https:// URL",
    ),
    "v1 without client cert": (
        lambda t: _v1(t, client_cert=None),
        "wos.client_cert: required with wos.api: v1",
    ),
    "v1 with oauth2": (
        lambda t: _v1(t, token_url="https://wfm.example/token"),
        "wos.token_url: not used with wos.api: v1",
    ),
    "client key without cert": (
        lambda t: _with(t, "wos", "client_key", "key.pem"),
        "wos.client_key: set wos.client_cert too",
    ),
    "settle not a duration": (
        lambda t: _with(t, "runtime", "settle", "soon"),
        "runtime.settle: bad duration 'soon'",
    ),
    "settle negative": (lambda t: _with(t, "runtime", "settle", -1), "runtime.settle: duration"),
    "settle past the health timeout": (
        lambda t: {**base_config(t), "runtime": {"settle": "2m", "health_timeout": "1m"}},
        "runtime.settle: must be shorter than runtime.health_timeout (60s)",
    ),
}


@pytest.mark.parametrize("name", sorted(NEW_KEY_MISTAKES))
def test_new_key_mistake_is_one_clear_line_and_exit_2(name, config_file, cli, tmp_path):
    _one_clear_line_and_exit_2(*NEW_KEY_MISTAKES[name], config_file, cli, tmp_path)


def test_capability_labels_take_what_the_v1_schema_allows(config_file, tmp_path):
    data = base_config(tmp_path)
    data["capabilities"] = {"labels": {"site": "plant-3", "floor": 2, "lines": ["a", "b"]}}
    assert (
        config.load_config(config_file(data)).capabilities.labels == data["capabilities"]["labels"]
    )
    data["capabilities"] = {"labels": {"site": {"nested": True}}}
    with pytest.raises(ConfigError, match=r"capabilities\.labels.*'site'"):
        config.load_config(config_file(data))
