"""The local policy gate: each rule denies by default and allows when configured.

Bind-path checks resolve links on the real filesystem (tmp_path), so the link case uses a
real symbolic link, not a stand-in.
"""

from __future__ import annotations

import os

import pytest

from margo_lite import policy, valueclass
from margo_lite.config import PolicyConfig
from margo_lite.errors import PackageError, PolicyError

DENY_ALL = PolicyConfig()


def compose(service: dict, **top) -> dict:
    return {"services": {"web": {"image": "localhost/testimg:1", **service}}, **top}


def allow(**changes) -> PolicyConfig:
    return valueclass.replace(DENY_ALL, **changes)


# (name, service fields, top-level sections, rule, the PolicyConfig change that allows it)
RULES = [
    ("privileged", {"privileged": True}, {}, "policy.allow_privileged", {"allow_privileged": True}),
    (
        "privileged string",
        {"privileged": "true"},
        {},
        "policy.allow_privileged",
        {"allow_privileged": True},
    ),
    (
        "host network",
        {"network_mode": "host"},
        {},
        "policy.allow_host_network",
        {"allow_host_network": True},
    ),
    (
        "external host network",
        {"networks": ["outside"]},
        {"networks": {"outside": {"external": True, "name": "host"}}},
        "policy.allow_host_network",
        {"allow_host_network": True},
    ),
    (
        "host driver network",
        {"networks": {"hn": {}}},
        {"networks": {"hn": {"driver": "host"}}},
        "policy.allow_host_network",
        {"allow_host_network": True},
    ),
    ("host pid", {"pid": "host"}, {}, "policy.allow_host_pid", {"allow_host_pid": True}),
    ("host ipc", {"ipc": "host"}, {}, "policy.allow_host_ipc", {"allow_host_ipc": True}),
    (
        "capability",
        {"cap_add": ["NET_ADMIN"]},
        {},
        "policy.allowed_capabilities",
        {"allowed_capabilities": ("CAP_NET_ADMIN",)},
    ),
    (
        "capability spelled CAP_",
        {"cap_add": ["cap_sys_time"]},
        {},
        "policy.allowed_capabilities",
        {"allowed_capabilities": ("SYS_TIME",)},
    ),
    (
        "device",
        {"devices": ["/dev/ttyUSB0:/dev/ttyUSB0"]},
        {},
        "policy.allow_devices",
        {"allow_devices": True},
    ),
    (
        "device cgroup rule",
        {"device_cgroup_rules": ["c 188:* rmw"]},
        {},
        "policy.allow_devices",
        {"allow_devices": True},
    ),
    (
        "gpu reservation",
        {"deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}},
        {},
        "policy.allow_devices",
        {"allow_devices": True},
    ),
    (
        "bind short syntax",
        {"volumes": ["/srv/data:/data:ro"]},
        {},
        "policy.allowed_bind_paths",
        {"allowed_bind_paths": ("/srv/data",)},
    ),
    (
        "bind long syntax",
        {"volumes": [{"type": "bind", "source": "/srv/data/app", "target": "/data"}]},
        {},
        "policy.allowed_bind_paths",
        {"allowed_bind_paths": ("/srv",)},
    ),
    (
        "named volume bound to a host folder",
        {"volumes": ["state:/state"]},
        {"volumes": {"state": {"driver_opts": {"type": "none", "o": "bind", "device": "/srv/x"}}}},
        "policy.allowed_bind_paths",
        {"allowed_bind_paths": ("/srv/x",)},
    ),
    (
        "env file on the host",
        {"env_file": ["/srv/env/app.env"]},
        {},
        "policy.allowed_bind_paths",
        {"allowed_bind_paths": ("/srv/env",)},
    ),
    (
        "build context on the host",
        {"build": {"context": "/srv/src"}},
        {},
        "policy.allowed_bind_paths",
        {"allowed_bind_paths": ("/srv/src",)},
    ),
    (
        "secret from a host file",
        {"secrets": ["token"]},
        {"secrets": {"token": {"file": "/srv/secrets/token"}}},
        "policy.allowed_bind_paths",
        {"allowed_bind_paths": ("/srv/secrets",)},
    ),
]


@pytest.mark.parametrize("name, service, top, rule, allowing", RULES, ids=[r[0] for r in RULES])
def test_each_rule_denies_by_default(name, service, top, rule, allowing):
    with pytest.raises(PolicyError) as caught:
        policy.check_compose(compose(service, **top), DENY_ALL)
    error = caught.value
    assert error.code == "POLICY_DENIED"
    assert (error.rule, error.service) == (rule, "web")
    assert "service 'web'" in error.message and rule in error.message


@pytest.mark.parametrize("name, service, top, rule, allowing", RULES, ids=[r[0] for r in RULES])
def test_each_rule_allows_when_configured(name, service, top, rule, allowing):
    policy.check_compose(compose(service, **top), allow(**allowing))


@pytest.mark.parametrize(
    "service",
    [
        {"privileged": False},
        {"privileged": "false"},
        {"network_mode": "bridge"},
        {"pid": "service:db"},
        {"volumes": ["data:/data", "/anonymous"]},
        {"volumes": ["./conf/app.ini:/etc/app.ini:ro", ".:/pkg"]},
        {"volumes": [{"type": "bind", "source": "./conf", "target": "/conf"}]},
        {"volumes": [{"type": "tmpfs", "target": "/tmp"}]},
        {"cap_drop": ["ALL"]},
        {"env_file": [".env", {"path": "conf/extra.env", "required": False}]},
        {"build": "."},
        {"build": {"context": "https://example.com/app.git"}},
    ],
)
def test_plain_containers_pass_a_deny_all_policy(service):
    policy.check_compose(compose(service), DENY_ALL)


@pytest.mark.parametrize(
    "source",
    [
        "/srv/data/../../etc",
        "/srv/data/../data-other",
        "/srv//data/../../",
        "/srv/dat",
        "~/x",
        "../outside",
        "./conf/../../outside",
    ],
)
def test_bind_paths_are_normalised_before_the_check(source):
    cfg = allow(allowed_bind_paths=("/srv/data",))
    with pytest.raises(PolicyError):
        policy.check_compose(compose({"volumes": [f"{source}:/x"]}), cfg)


@pytest.mark.parametrize("source", ["/srv/data", "/srv/data/", "/srv/./data/sub", "//srv/data/a"])
def test_bind_paths_inside_the_allowed_folder(source):
    policy.check_compose(
        compose({"volumes": [f"{source}:/x"]}), allow(allowed_bind_paths=("/srv/data/",))
    )


def test_a_link_below_an_allowed_folder_cannot_lead_elsewhere(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", allowed / "planted")
    cfg = allow(allowed_bind_paths=(str(allowed),))
    policy.check_compose(compose({"volumes": [f"{allowed}/real:/x"]}), cfg)
    with pytest.raises(PolicyError, match="planted"):
        policy.check_compose(compose({"volumes": [f"{allowed}/planted/file:/x"]}), cfg)


def test_an_allowed_folder_that_is_itself_a_link_works(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "data")
    cfg = allow(allowed_bind_paths=(str(tmp_path / "data"),))
    policy.check_compose(compose({"volumes": [f"{tmp_path}/data/sub:/x"]}), cfg)


def test_only_listed_capabilities_are_allowed():
    cfg = allow(allowed_capabilities=("NET_BIND_SERVICE",))
    policy.check_compose(compose({"cap_add": ["NET_BIND_SERVICE"]}), cfg)
    with pytest.raises(PolicyError, match="cap_add ALL"):
        policy.check_compose(compose({"cap_add": ["NET_BIND_SERVICE", "ALL"]}), cfg)


def test_every_violation_is_named_with_its_service():
    document = {
        "services": {
            "a": {"privileged": True},
            "b": {"pid": "host", "volumes": ["/etc:/host-etc"]},
        }
    }
    with pytest.raises(PolicyError) as caught:
        policy.check_compose(document, DENY_ALL)
    message = caught.value.message
    assert (caught.value.rule, caught.value.service) == ("policy.allow_privileged", "a")
    for part in ("service 'a': privileged", "service 'b': pid: host", "'/etc'"):
        assert part in message
    assert [v.service for v in policy.violations(document, DENY_ALL)] == ["a", "b", "b"]


@pytest.mark.parametrize("document", [{}, {"services": []}, {"services": {"web": "nginx"}}])
def test_a_malformed_compose_document_is_invalid_not_allowed(document):
    with pytest.raises(PackageError) as caught:
        policy.check_compose(document, DENY_ALL)
    assert caught.value.code == "PACKAGE_INVALID"
