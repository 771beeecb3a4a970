"""OCI compose packages: pulled from Debian's docker-registry over TLS, verified, cached.

The registry is the real distribution registry 2.8 on 127.0.0.1 with its own storage and a
test CA; artifacts are pushed through its API the way `docker compose publish` lays them
out. Tampering happens where an attacker would do it: in the registry's storage on disk.
"""

# Fixtures are imported from tests.support.pkgfixtures, so test arguments shadow them:
# ruff: noqa: F811

from __future__ import annotations

import gc
import os
import re
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from margo_lite import archive, oci, policy, proxy, valueclass
from margo_lite.backends import ComponentUnit
from margo_lite.config import PackagesConfig, PolicyConfig
from margo_lite.errors import (
    DownloadError,
    OciError,
    OciTransientError,
    PackageError,
    PackageTransientError,
    PolicyError,
)
from margo_lite.packages import PackageStore
from tests.support.hypo import examples
from tests.support.ocipush import COMPOSE_FILE, ENV_FILE, Pusher, descriptor, digest_of
from tests.support.pkgfixtures import (  # noqa: F401 (fixtures)
    cache_leftovers,
    make_store,
    make_tar,
    test_ca,
)
from tests.support.pkgserver import read_tree
from tests.support.proxyserver import ForwardProxy
from tests.support.registry import Registry
from tests.support.testca import TestCA, make_ca
from tests.support.tokenserver import TokenServer
from tests.support.wait import wait_for

EMPTY: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry"), test_ca) as running:
        yield running


@pytest.fixture
def pusher(registry: Registry, test_ca: TestCA) -> Pusher:
    return Pusher(registry.host, test_ca.ca_file)


@pytest.fixture
def name() -> str:
    """A repository of the test's own: no test sees another's tags or blobs."""
    return f"apps/t{uuid.uuid4().hex[:12]}"


def compose(name: str) -> bytes:
    """A compose file whose bytes (and so its blob) belong to one test only."""
    return f"# {name}\nservices:\n  web:\n    image: localhost/testimg:1\n".encode()


def blob_gets(registry: Registry, name: str) -> list[tuple[str, int]]:
    return registry.requests("GET", f"/v2/{name}/blobs/")


# --- the two artifact formats --------------------------------------------------------------


@pytest.mark.parametrize("oci_1_0", [False, True], ids=["oci-1.1", "oci-1.0-fallback"])
def test_compose_artifact_files_land_in_the_package_folder(
    registry, pusher, name, make_store, oci_1_0
):
    env = b"GREETING=hello\n"
    pusher.compose_artifact(
        name, "1.0.0", [("compose.yaml", compose(name))], [(".env", env)], oci_1_0=oci_1_0
    )
    prepared = make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert read_tree(prepared.path) == {"compose.yaml": compose(name), ".env": env}
    assert prepared.compose_file == prepared.path / "compose.yaml"


def test_tar_gzip_layer_holds_the_package_folder(registry, pusher, name, make_store):
    files = [("docker-compose.yml", compose(name)), ("conf/app.ini", b"listen = 8080\n")]
    pusher.tar_package(name, "2.1.0", make_tar(files))
    prepared = make_store().prepare(registry.location(name, "2.1.0"), None, EMPTY)
    assert read_tree(prepared.path) == dict(files)
    assert prepared.compose_file.name == "docker-compose.yml"


def test_an_index_leads_to_its_compose_artifact(registry, pusher, name, make_store):
    other = pusher.tar_package(name, "image", make_tar([("compose.yaml", b"services: {}\n")]))
    wanted = pusher.compose_artifact(name, "artifact", [("compose.yaml", compose(name))])
    pusher.index(name, "1.0.0", [(other, ""), (wanted, oci.COMPOSE_PROJECT)])
    prepared = make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert read_tree(prepared.path) == {"compose.yaml": compose(name)}


def test_a_revision_may_be_a_digest(registry, pusher, name, make_store):
    digest = pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    prepared = make_store().prepare(registry.location(name, digest), None, EMPTY)
    assert prepared.compose_file.read_bytes() == compose(name)


def test_the_same_package_from_oci_and_from_a_repository_folder(registry, pusher, name, make_store):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    store = make_store()
    from_oci = store.prepare(registry.location(name, "1.0.0"), None, EMPTY)
    from_repo = store.prepare("pkg", None, {"pkg/compose.yaml": compose(name)})
    assert from_oci == from_repo


# --- cache -----------------------------------------------------------------------------------


def test_a_package_pulled_before_costs_one_manifest_request_and_no_blob(
    registry, pusher, name, make_store
):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    location = registry.location(name, "1.0.0")
    first = make_store().prepare(location, None, EMPTY)
    gets = len(blob_gets(registry, name))
    second = make_store().prepare(location, None, EMPTY)  # after a restart, too
    assert second == first
    assert len(blob_gets(registry, name)) == gets == 1
    assert len(registry.requests("GET", f"/v2/{name}/manifests/")) == 2


def test_a_tag_moved_to_a_new_artifact_gives_the_new_package(registry, pusher, name, make_store):
    store = make_store()
    location = registry.location(name, "stable")
    pusher.compose_artifact(name, "stable", [("compose.yaml", compose(name))])
    old = store.prepare(location, None, EMPTY)
    pusher.compose_artifact(name, "stable", [("compose.yaml", compose(name) + b"# v2\n")])
    new = store.prepare(location, None, EMPTY)
    assert new.digest != old.digest
    assert new.compose_file.read_bytes().endswith(b"# v2\n")
    store.prune({new.digest})
    assert not old.path.exists() and store.verify(new.digest) == new


def test_a_changed_ready_folder_is_pulled_again(registry, pusher, name, make_store):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    location = registry.location(name, "1.0.0")
    store = make_store()
    first = store.prepare(location, None, EMPTY)
    first.compose_file.write_bytes(b"services: {evil: {image: x, privileged: true}}\n")
    with pytest.raises(PackageTransientError, match="PACKAGE_TAMPERED"):
        store.verify(first.digest)
    again = store.prepare(location, None, EMPTY)
    assert again.compose_file.read_bytes() == compose(name)
    assert len(blob_gets(registry, name)) == 2


# --- what the registry may get wrong --------------------------------------------------------


def test_a_tampered_blob_is_refused_and_nothing_is_cached(
    registry, pusher, name, make_store, tmp_path
):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    stored = registry.blob_file(digest_of(compose(name)))
    stored.write_bytes(compose(name).replace(b"web", b"bad"))  # same size, other bytes
    store = make_store()
    with pytest.raises(OciError) as caught:
        store.prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert caught.value.code == "OCI_DIGEST_MISMATCH"
    assert cache_leftovers(tmp_path / "cache") == []


def test_a_tampered_manifest_is_refused(registry, pusher, name, make_store, tmp_path):
    digest = pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    stored = registry.blob_file(digest)
    stored.write_bytes(stored.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2 '))
    for revision in ("1.0.0", digest):
        with pytest.raises(OciError, match="OCI_DIGEST_MISMATCH"):
            make_store().prepare(registry.location(name, revision), None, EMPTY)
    assert cache_leftovers(tmp_path / "cache") == []
    assert blob_gets(registry, name) == []


@pytest.mark.parametrize("what", ["tag", "repository"])
def test_a_missing_tag_or_repository_is_not_found(registry, pusher, name, make_store, what):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    missing = (
        registry.location(name, "9.9.9")
        if what == "tag"
        else registry.location(name + "-gone", "1.0.0")
    )
    with pytest.raises(OciError) as caught:
        make_store().prepare(missing, None, EMPTY)
    assert caught.value.code == "OCI_NOT_FOUND"
    assert not isinstance(caught.value, OciTransientError)


def test_a_registry_certificate_from_another_ca_is_refused(
    registry, pusher, name, make_store, tmp_path
):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    other = make_ca(tmp_path / "other-ca", "some other CA")
    with pytest.raises(OciTransientError) as caught:
        make_store(ca_file=str(other.ca_file)).prepare(
            registry.location(name, "1.0.0"), None, EMPTY
        )
    assert caught.value.code == "OCI_UNREACHABLE"
    assert "TLS" in caught.value.message and "certificate" in caught.value.message
    assert registry.requests("GET", f"/v2/{name}/") == []


def test_no_registry_listening_is_transient(make_store):
    with pytest.raises(OciTransientError, match="OCI_UNREACHABLE"):
        make_store().prepare("oci://127.0.0.1:9/apps/web:1.0.0", None, EMPTY)


# --- hostile annotations and sizes ----------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        ["../x"],
        ["/etc/passwd"],
        ["sub/compose.yaml"],
        [".."],
        ["."],
        [".compose.yaml"],
        ["compose.yaml\n"],
        ["compose\x00.yaml"],
        ["a\\b"],
        [""],
        ["x" * 256],
        ["compose.yaml", "compose.yaml"],
    ],
    ids=repr,
)
def test_hostile_file_names_are_refused_before_any_blob(
    registry, pusher, name, make_store, tmp_path, names
):
    data = compose(name)
    pusher.blob(name, data)
    layers = [descriptor(COMPOSE_FILE, data, {"com.docker.compose.file": n}) for n in names]
    pusher.raw_manifest(name, "1.0.0", layers)
    with pytest.raises(OciError) as caught:
        make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert caught.value.code == "OCI_MANIFEST_INVALID"
    assert blob_gets(registry, name) == []
    assert cache_leftovers(tmp_path / "cache") == []
    assert not (tmp_path / "x").exists()


def test_an_env_file_named_like_the_compose_file_is_refused(registry, pusher, name, make_store):
    data = compose(name)
    pusher.blob(name, data)
    layers = [
        descriptor(COMPOSE_FILE, data, {"com.docker.compose.file": "compose.yaml"}),
        descriptor(ENV_FILE, data, {"com.docker.compose.envfile": "compose.yaml"}),
    ]
    pusher.raw_manifest(name, "1.0.0", layers)
    with pytest.raises(OciError, match="used twice"):
        make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)


def test_files_the_compose_file_extends_ride_along(registry, pusher, name, make_store):
    base = b"services:\n  base:\n    image: localhost/testimg:1\n"
    main = compose(name) + b"    extends: {file: 0a1b.yaml, service: base}\n"
    for data in (main, base):
        pusher.blob(name, data)
    layers = [
        descriptor(COMPOSE_FILE, main, {"com.docker.compose.file": "compose.yaml"}),
        descriptor(
            COMPOSE_FILE,
            base,
            {"com.docker.compose.file": "0a1b.yaml", "com.docker.compose.extends": "true"},
        ),
    ]
    pusher.raw_manifest(name, "1.0.0", layers)
    prepared = make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert read_tree(prepared.path) == {"compose.yaml": main, "0a1b.yaml": base}


@pytest.mark.parametrize(
    "layers",
    [
        [("compose.yaml", COMPOSE_FILE), ("image-digests.yaml", COMPOSE_FILE)],
        [("docker-compose.yml", COMPOSE_FILE), ("compose.yaml", ENV_FILE)],
    ],
    ids=["two compose files to merge", "an env file named like a compose file"],
)
def test_an_artifact_margo_lite_would_run_differently_is_refused(
    registry, pusher, name, make_store, layers
):
    data = compose(name)
    pusher.blob(name, data)
    descriptors = [
        descriptor(kind, data, {oci.FILE_ANNOTATIONS[kind]: file}) for file, kind in layers
    ]
    pusher.raw_manifest(name, "1.0.0", descriptors)
    with pytest.raises(OciError, match="OCI_MANIFEST_INVALID"):
        make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert blob_gets(registry, name) == []


def test_a_layer_larger_than_allowed_is_refused_before_download(registry, pusher, name, make_store):
    big = compose(name) + b"#" * (oci.MAX_FILE_LAYER + 1)
    pusher.blob(name, big)
    layers = [descriptor(COMPOSE_FILE, big, {"com.docker.compose.file": "compose.yaml"})]
    pusher.raw_manifest(name, "1.0.0", layers)
    noise = os.urandom(8192)  # does not compress: the layer itself is over the limit
    pusher.tar_package(name, "tar", make_tar([("compose.yaml", compose(name)), ("z", noise)]))
    with pytest.raises(PackageError, match="PACKAGE_TOO_LARGE"):
        make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    with pytest.raises(PackageError, match="PACKAGE_TOO_LARGE"):
        make_store(max_size=4096).prepare(registry.location(name, "tar"), None, EMPTY)
    assert blob_gets(registry, name) == []


def test_a_tar_layer_is_extracted_with_the_archive_safety_rules(
    registry, pusher, name, make_store, tmp_path
):
    pusher.tar_package(name, "1.0.0", make_tar([("compose.yaml", compose(name)), ("../x", b"")]))
    with pytest.raises(PackageError, match="UNSAFE_ARCHIVE"):
        make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert not (tmp_path / "x").exists()


def test_an_oci_package_goes_through_the_policy_gate(registry, pusher, name, make_store):
    evil = f"# {name}\nservices:\n  web:\n    image: x\n    privileged: true\n".encode()
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", evil)])
    prepared = make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    unit = ComponentUnit.from_package("d1", "web", prepared.path, {}, {}, "", device="gw")
    with pytest.raises(PolicyError, match="POLICY_DENIED"):
        policy.check_compose(unit.document, PolicyConfig(), package_dir=prepared.path)


def test_a_component_with_repository_and_revision_gets_its_package(
    registry, pusher, name, make_store
):
    """The v1 component shape: `repository` + `revision` make the package location."""
    pusher.compose_artifact(name, "1.2.0", [("compose.yaml", compose(name))])
    properties = {"repository": f"oci://{registry.host}/{name}", "revision": "1.2.0"}
    location = oci.location(properties["repository"], properties["revision"])
    prepared = make_store().prepare(location, None, EMPTY)
    assert prepared.compose_file.read_bytes() == compose(name)


def test_oci_packages_cannot_meet_a_signature_requirement(registry, pusher, name, make_store):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    with pytest.raises(PackageError, match="SIGNATURE_MISSING"):
        make_store(require_signature=True).prepare(registry.location(name, "1.0.0"), None, EMPTY)


# --- token auth ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[tuple[Registry, TokenServer]]:
    folder = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(folder / "tokens", test_ca, {"alice": "wonder-land-42"})
    with tokens, Registry(folder / "registry", test_ca, tokens=tokens) as running:
        yield running, tokens


def _with_user(location: str, user: str, password: str) -> str:
    return location.replace("oci://", f"oci://{user}:{password}@", 1)


def test_token_auth_with_credentials(token_registry, test_ca, name, make_store, secret_free_logs):
    registry, tokens = token_registry
    Pusher(registry.host, test_ca.ca_file, user="alice", password="wonder-land-42").tar_package(
        name, "1.0.0", make_tar([("compose.yaml", compose(name))])
    )
    location = _with_user(registry.location(name, "1.0.0"), "alice", "wonder-land-42")
    prepared = make_store().prepare(location, None, EMPTY)
    assert prepared.compose_file.read_bytes() == compose(name)
    assert tokens.requests[-1] == ("alice", f"repository:{name}:pull")
    statuses = [s for _, s in registry.requests("GET", f"/v2/{name}/")]
    assert statuses == [401, 200, 200]  # manifest refused, then with the token; the blob
    assert "wonder-land-42" not in secret_free_logs.raw_text


@pytest.mark.parametrize("password", [None, "wrong"])
def test_token_auth_refused(token_registry, test_ca, name, make_store, password):
    registry, tokens = token_registry
    Pusher(registry.host, test_ca.ca_file, user="alice", password="wonder-land-42").tar_package(
        name, "1.0.0", make_tar([("compose.yaml", compose(name))])
    )
    location = registry.location(name, "1.0.0")
    if password is not None:
        location = _with_user(location, "alice", password)
    with pytest.raises(OciError) as caught:
        make_store().prepare(location, None, EMPTY)
    assert caught.value.code == "OCI_AUTH_FAILED"
    assert not isinstance(caught.value, OciTransientError)
    assert tokens.requests[-1][0] == ("alice" if password else None)


# --- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "oci://host/app",  # no revision
        "oci:///app:1",
        "oci://host/App:1",  # upper case name
        "oci://host/app:1?x=y",
        "oci://host:99999/app:1",
        "oci://host/app:-bad",
        "oci://host/../app:1",
        "https://host/app:1",
    ],
)
def test_invalid_references_are_refused(location):
    with pytest.raises(OciError) as caught:
        oci.parse(location)
    assert caught.value.code == "OCI_REFERENCE_INVALID"


def test_references_are_parsed():
    ref = oci.parse("oci://u:p%40ss@Registry.example:5000/team/app:1.2.0")
    assert (ref.host, ref.name, ref.tag, ref.digest) == (
        "registry.example:5000",
        "team/app",
        "1.2.0",
        None,
    )
    assert (ref.user, ref.password) == ("u", "p@ss")
    assert ref.shown == "oci://registry.example:5000/team/app:1.2.0"
    digest = "sha256:" + "a" * 64
    assert oci.parse(f"oci://h/app@{digest}").digest == digest
    assert oci.location("oci://h:1/app/", "1.0.0") == "oci://h:1/app:1.0.0"
    assert oci.location("oci://h/app", digest) == f"oci://h/app@{digest}"
    with pytest.raises(OciError, match="OCI_REFERENCE_INVALID"):
        oci.location("oci://h/app:1.0.0", "2.0.0")


def test_other_digest_algorithms_are_refused_with_their_own_code():
    manifest = {
        "schemaVersion": 2,
        "artifactType": oci.COMPOSE_PROJECT,
        "layers": [
            {
                "mediaType": oci.COMPOSE_FILE,
                "digest": "sha512:" + "a" * 128,
                "size": 10,
                "annotations": {"com.docker.compose.file": "compose.yaml"},
            }
        ],
    }
    with pytest.raises(OciError) as caught:
        oci.plan(manifest, "test", 1 << 20)
    assert caught.value.code == "OCI_DIGEST_UNSUPPORTED"
    with pytest.raises(OciError, match="OCI_DIGEST_UNSUPPORTED"):
        oci.parse("oci://h/app@sha512:" + "a" * 128)


def test_manifests_with_duplicate_keys_are_refused():
    with pytest.raises(OciError, match="duplicate key"):
        oci.read_json(b'{"schemaVersion": 2, "layers": [], "layers": []}', "test")


def test_only_env_files_may_start_with_a_dot():
    assert oci.file_name(".env", "x", env=True) == ".env"
    with pytest.raises(OciError):
        oci.file_name(".env", "x", env=False)


# --- fuzzing the pure readers ----------------------------------------------------------------

_PIECES = st.sampled_from([*"az09.:/@_-\\\x00\n %", "..", "sha256:", "a" * 64, "x" * 200])
_TEXT = st.lists(_PIECES, max_size=12).map("".join)
_DESCRIPTOR = st.fixed_dictionaries(
    {
        "mediaType": st.sampled_from([oci.COMPOSE_FILE, oci.ENV_FILE, oci.TAR_GZIP[0], "x"]),
        "digest": st.one_of(st.just("sha256:" + "0" * 64), _TEXT),
        "size": st.one_of(st.integers(0, 99), st.integers(-2, 3 << 20), st.just("1")),
        "annotations": st.dictionaries(
            st.sampled_from(list(oci.FILE_ANNOTATIONS.values())), _TEXT, max_size=2
        ),
    }
)


@settings(max_examples=examples(200), deadline=None)
@given(
    layers=st.lists(_DESCRIPTOR, max_size=4),
    artifact=st.sampled_from([oci.COMPOSE_PROJECT, "", "x"]),
)
def test_any_manifest_gives_a_safe_plan_or_a_coded_refusal(layers, artifact):
    manifest = {"schemaVersion": 2, "artifactType": artifact, "layers": layers}
    try:
        plan = oci.plan(manifest, "fuzz", 1 << 20)
    except OciError as exc:
        assert exc.code.startswith("OCI_") or exc.code == "PACKAGE_TOO_LARGE"
        return
    names = [name for _, name in plan.layers if name]
    assert len(names) == len(set(names))
    for name in names:
        assert archive.member_path(name) == name and "/" not in name and name not in (".", "..")


@settings(max_examples=examples(300), deadline=None)
@given(
    st.builds(
        "oci://{}/{}{}{}".format,
        st.sampled_from(["h", "h.example:5000", "H", "", "h:x", "[::1]:1", "u:p@h"]),
        _TEXT,
        st.sampled_from([":", "@", ""]),
        _TEXT,
    )
)
def test_any_reference_parses_or_is_refused_with_a_code(location):
    try:
        ref = oci.parse(location)
    except OciError as exc:
        assert exc.code in (
            "OCI_REFERENCE_INVALID",
            "OCI_DIGEST_UNSUPPORTED",
            "OCI_MANIFEST_INVALID",
        )
        return
    url = ref.url("manifests", ref.revision)  # credentials, when given, ride in the URL
    assert re.match(rf"https://([^@/]+@)?{re.escape(ref.host)}/v2/{re.escape(ref.name)}/", url)
    assert ".." not in ref.name.split("/")


# --- site proxy ------------------------------------------------------------------------------


def test_pulls_go_through_the_site_proxy(registry, pusher, name, test_ca, tmp_path):
    pusher.compose_artifact(name, "1.0.0", [("compose.yaml", compose(name))])
    cfg = valueclass.replace(PackagesConfig(), ca_file=str(test_ca.ca_file))
    location = registry.location(name, "1.0.0")
    port = int(registry.host.rsplit(":", 1)[1])
    with ForwardProxy(auth=("carol", "proxy-pass-77")) as squid:
        wrong = proxy.resolve(proxy.Proxy("127.0.0.1", squid.port, "carol"), (), False, {}, "nope")
        with pytest.raises(DownloadError, match="PROXY_AUTH_FAILED"):
            PackageStore(cfg, tmp_path / "wrong", proxies=wrong).prepare(location, None, EMPTY)
        right = proxy.resolve(
            proxy.Proxy("127.0.0.1", squid.port, "carol"), (), False, {}, "proxy-pass-77"
        )
        store = PackageStore(cfg, tmp_path / "cache", proxies=right)
        prepared = store.prepare(location, None, EMPTY)
        assert prepared.compose_file.read_bytes() == compose(name)
        del store  # its pooled connections close, and squid logs each tunnel as it ends
        gc.collect()
        tunnels = wait_for(lambda: squid.entries(port), timeout=30, what="CONNECT in the log")
    assert {(e.method, e.user) for e in tunnels} == {("CONNECT", "carol")}
    assert len(blob_gets(registry, name)) == 1


def test_a_blob_larger_than_its_descriptor_says_is_cut_there(registry, pusher, name, make_store):
    data = compose(name)
    pusher.blob(name, data)
    lying = {**descriptor(COMPOSE_FILE, data), "size": 10}
    lying["annotations"] = {"com.docker.compose.file": "compose.yaml"}
    pusher.raw_manifest(name, "1.0.0", [lying])
    with pytest.raises(PackageError) as caught:
        make_store().prepare(registry.location(name, "1.0.0"), None, EMPTY)
    assert caught.value.code == "PACKAGE_TOO_LARGE"


def test_a_failing_token_service_is_retried_then_transient(
    token_registry, test_ca, name, make_store
):
    registry, tokens = token_registry
    Pusher(registry.host, test_ca.ca_file, user="alice", password="wonder-land-42").tar_package(
        name, "1.0.0", make_tar([("compose.yaml", compose(name))])
    )
    location = _with_user(registry.location(name, "1.0.0"), "alice", "wonder-land-42")
    tokens.fail_next = [503]
    store = make_store()
    assert store.prepare(location, None, EMPTY).compose_file.read_bytes() == compose(name)
    assert store.sleeps == [1.0]
    tokens.fail_next = [503, 502, 500]
    with pytest.raises(OciTransientError) as caught:
        make_store().prepare(location, None, EMPTY)
    assert caught.value.code == "OCI_UNREACHABLE" and "HTTP 500" in caught.value.message


def test_a_token_is_reused_until_it_expires(token_registry, test_ca, name, make_store):
    registry, tokens = token_registry
    Pusher(registry.host, test_ca.ca_file, user="alice", password="wonder-land-42").tar_package(
        name, "1.0.0", make_tar([("compose.yaml", compose(name))])
    )
    location = _with_user(registry.location(name, "1.0.0"), "alice", "wonder-land-42")
    store = make_store()
    asked = len(tokens.requests)
    store.prepare(location, None, EMPTY)
    store.prepare(location, None, EMPTY)
    assert len(tokens.requests) == asked + 1
    statuses = [s for _, s in registry.requests("GET", f"/v2/{name}/manifests/")]
    assert statuses == [401, 200, 200]
