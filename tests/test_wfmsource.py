"""The Margo 1.0 desired-state source against a real HTTPS server on 127.0.0.1.

What a user (or an attacker) can check from outside: which requests the device sends, what
the snapshot holds, what lands in state_dir, and which code an error carries.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import pytest
import urllib3

from margo_lite import desired, pools, wfmmanifest, wfmsource
from margo_lite.devkit.wfmsim import digest, make_bundle
from margo_lite.errors import SourceError, TransientError
from margo_lite.statestore import StateStore
from margo_lite.wfmsource import WfmSource
from tests.support.testca import make_ca
from tests.support.wfmserver import WfmServer


def doc(dep: str, image: str = "nginx") -> bytes:
    return (
        f"id: {dep}\nmetadata:\n  name: {dep}\n  namespace: ns\n  deviceId: dev-1\n"
        f"spec:\n  applicationId: app\n  deploymentProfile:\n    type: compose\n"
        f"    components:\n      - name: web\n        properties:\n"
        f"          repository: oci://registry.example/{image}\n          revision: 1.0.0\n"
    ).encode()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def server(ca):
    with WfmServer(ca) as srv:
        yield srv


@pytest.fixture
def pool(ca):
    with pools.Pools(ca_file=str(ca.ca_file), timeout=10.0, retries=False) as p:
        yield p


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def source(server: WfmServer, state: Path, pool) -> WfmSource:
    return WfmSource(server.url, state, pool)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below root with its mtime and size: what a write would change."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            info = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (
                info.st_mtime_ns,
                info.st_size,
            )
    return found


def paths(server: WfmServer, since: int = 0) -> list[str]:
    return [s.path for s in server.requests()[since:]]


def test_first_poll_fetches_the_bundle_and_the_snapshot_holds_each_document(server, state, pool):
    docs = {"d-1": doc("d-1"), "d-2": doc("d-2")}
    server.publish(docs, 1)
    src = source(server, state, pool)
    assert src.held_revision() is None
    result = src.poll()
    assert (result.revision, result.changed) == ("1", True)
    assert paths(server) == ["/api/v1/deployments", paths(server)[1]]
    assert paths(server)[1].startswith("/api/v1/bundles/sha256:")
    assert server.requests()[0].header("accept") == "application/vnd.margo.manifest.v1+json"
    assert server.requests()[0].header("if-none-match") is None
    snap = src.snapshot("1")
    assert snap.revision == "1"
    assert dict(snap.files) == {"d-1.yaml": docs["d-1"], "d-2.yaml": docs["d-2"]}


def test_an_idle_poll_is_one_conditional_get_answered_304_and_writes_nothing(server, state, pool):
    manifest = server.publish({"d-1": doc("d-1")}, 7)
    src = source(server, state, pool)
    src.poll()
    before = listing(state)
    mark = len(server.requests())
    for _ in range(3):
        result = src.poll()
        assert (result.revision, result.changed) == ("7", False)
    seen = server.requests()[mark:]
    assert [s.answer for s in seen] == [304, 304, 304]
    assert {s.header("if-none-match") for s in seen} == {f'"{digest(manifest)}"'}
    assert listing(state) == before


def test_one_changed_document_is_fetched_alone_by_its_digest(server, state, pool):
    docs = {f"d-{i}": doc(f"d-{i}") for i in range(3)}
    server.publish(docs, 1)
    src = source(server, state, pool)
    src.poll()
    docs["d-1"] = doc("d-1", image="httpd")
    server.publish(docs, 2)
    mark = len(server.requests())
    assert src.poll().revision == "2"
    assert paths(server, mark) == [
        "/api/v1/deployments",
        f"/api/v1/deployments/d-1/{digest(docs['d-1'])}",
    ]
    assert src.snapshot("2").files["d-1.yaml"] == docs["d-1"]


def test_a_removed_deployment_is_absent_from_the_next_snapshot(server, state, pool):
    server.publish({"d-1": doc("d-1"), "d-2": doc("d-2")}, 1)
    src = source(server, state, pool)
    src.poll()
    server.publish({"d-2": doc("d-2")}, 2)
    mark = len(server.requests())
    src.poll()
    assert paths(server, mark) == ["/api/v1/deployments"]  # d-2 is cached
    assert set(src.snapshot("2").files) == {"d-2.yaml"}
    server.publish({}, 3)
    src.poll()
    assert dict(src.snapshot("3").files) == {}


def test_a_tampered_document_refuses_the_whole_manifest_and_keeps_the_last(server, state, pool):
    docs = {"d-1": doc("d-1"), "d-2": doc("d-2"), "d-3": doc("d-3")}
    server.publish(docs, 1)
    src = source(server, state, pool)
    src.poll()
    docs["d-3"] = doc("d-3", image="httpd")
    server.publish(docs, 2)
    server.replace(f"/api/v1/deployments/d-3/{digest(docs['d-3'])}", doc("d-3", image="evil"))
    with pytest.raises(SourceError) as err:
        src.poll()
    assert err.value.code == "WFM_DIGEST_MISMATCH"
    assert not isinstance(err.value, TransientError)
    assert src.held_revision() == "1"
    assert src.snapshot("1").files["d-3.yaml"] == doc("d-3")
    restarted = source(server, state, pool)
    assert restarted.held_revision() == "1"  # nothing of manifest 2 was recorded


def test_a_tampered_bundle_refuses_the_whole_manifest(server, state, pool):
    server.publish({"d-1": doc("d-1"), "d-2": doc("d-2")}, 1)
    bundle = json.loads(server.manifest)["bundle"]["url"]
    server.replace(bundle, make_bundle({"d-1.yaml": doc("d-1", "evil"), "d-2.yaml": doc("d-2")}))
    src = source(server, state, pool)
    with pytest.raises(SourceError) as err:
        src.poll()
    assert err.value.code == "WFM_DIGEST_MISMATCH"
    assert src.held_revision() is None
    assert not (state / "wfm" / "accepted.json").exists()


@pytest.mark.parametrize("older", [4, 5])
def test_a_lower_or_equal_manifest_version_with_other_bytes_is_refused(server, state, pool, older):
    server.publish({"d-1": doc("d-1")}, 5)
    src = source(server, state, pool)
    src.poll()
    server.publish({"d-1": doc("d-1", "httpd")}, older)
    with pytest.raises(SourceError) as err:
        src.poll()
    assert err.value.code == "WFM_ROLLBACK_REFUSED"
    assert src.held_revision() == "5"
    assert src.snapshot("5").files["d-1.yaml"] == doc("d-1")


def test_a_replayed_older_manifest_is_refused_even_after_a_restart(server, state, pool):
    old = server.publish({"d-1": doc("d-1")}, 1)
    src = source(server, state, pool)
    src.poll()
    server.publish({"d-1": doc("d-1", "httpd")}, 2)
    src.poll()
    server.serve_manifest(old)  # its documents are still served: a faithful replay
    with pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == "WFM_ROLLBACK_REFUSED"
    assert source(server, state, pool).held_revision() == "2"


def test_the_same_bytes_again_under_another_etag_are_accepted_unchanged(server, state, pool):
    server.publish({"d-1": doc("d-1")}, 3)
    src = source(server, state, pool)
    src.poll()
    server.etag = "another-etag"
    mark = len(server.requests())
    result = src.poll()
    assert (result.revision, result.changed) == ("3", False)
    assert [s.answer for s in server.requests()[mark:]] == [200]
    src.poll()  # the new ETag is what the device sends now
    assert server.requests()[-1].header("if-none-match") == '"another-etag"'
    assert server.requests()[-1].answer == 304


def test_a_restart_keeps_the_version_and_etag(server, state, pool):
    server.publish({"d-1": doc("d-1")}, 9)
    source(server, state, pool).poll()
    again = source(server, state, pool)
    assert again.held_revision() == "9"
    before = listing(state)
    mark = len(server.requests())
    assert again.poll().changed is False
    assert [s.answer for s in server.requests()[mark:]] == [304]
    assert again.snapshot("9").files["d-1.yaml"] == doc("d-1")
    assert listing(state) == before


def test_cached_documents_cost_no_fetch_after_a_crash_before_the_record(server, state, pool):
    server.publish({"d-1": doc("d-1"), "d-2": doc("d-2")}, 1)
    source(server, state, pool).poll()
    for name in ("accepted.json", "accepted.json.prev"):
        (state / "wfm" / name).unlink(missing_ok=True)  # as if the process died before it
    mark = len(server.requests())
    src = source(server, state, pool)
    assert src.poll().revision == "1"
    assert paths(server, mark) == ["/api/v1/deployments"]


def test_a_damaged_cached_document_is_fetched_again(server, state, pool):
    server.publish({"d-1": doc("d-1")}, 1)
    src = source(server, state, pool)
    src.poll()
    (cached,) = (state / "wfm" / "documents").iterdir()
    cached.write_bytes(b"rotten")
    with pytest.raises(SourceError) as err:
        src.snapshot("1")
    assert err.value.code == "WFM_CACHE_CORRUPT" and isinstance(err.value, TransientError)
    assert src.poll().revision == "1"  # no If-None-Match now: the manifest and document again
    assert src.snapshot("1").files["d-1.yaml"] == doc("d-1")


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/api/v1/deployments/d-1/{d}",
        "//evil.example/api/v1/deployments/d-1/{d}",
        "/api/v1/../../../etc/{d}",
        "/api/v1/deployments/%2e%2e/{d}",
        "/other/d-1/{d}",
        "/api/v1/deployments/d-1/{d}?redirect=https://evil.example",
        "http://127.0.0.1:1/api/v1/deployments/d-1/{d}",
    ],
)
def test_a_url_outside_the_wfm_api_is_refused_before_any_request(server, state, pool, url):
    data = doc("d-1")
    ref = {"deploymentId": "d-1", "digest": digest(data), "url": url.format(d=digest(data))}
    server.serve_manifest(
        json.dumps({"manifestVersion": 1, "bundle": None, "deployments": [ref]}).encode()
    )
    src = source(server, state, pool)
    with pytest.raises(SourceError) as err:
        src.poll()
    assert err.value.code == "WFM_URL_REFUSED"
    assert paths(server) == ["/api/v1/deployments"]


def test_an_oversized_document_is_refused(server, state, pool, monkeypatch):
    monkeypatch.setattr(wfmmanifest, "MAX_SNAPSHOT_BYTES", 4096)
    server.publish({"d-1": doc("d-1") + b"#" * 5000}, 1)
    with pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == "WFM_TOO_LARGE"


def test_an_oversized_manifest_is_refused(server, state, pool, monkeypatch):
    monkeypatch.setattr(wfmmanifest, "MAX_MANIFEST_BYTES", 300)
    server.publish({f"d-{i}": doc(f"d-{i}") for i in range(5)}, 1)
    with pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == "WFM_TOO_LARGE"
    assert paths(server) == ["/api/v1/deployments"]


@pytest.mark.parametrize("change", ["extra", "missing", "renamed-and-duplicated"])
def test_a_bundle_not_holding_exactly_the_manifests_documents_is_refused(
    server, state, pool, change
):
    docs = {"d-1": doc("d-1"), "d-2": doc("d-2")}
    files = {f"{dep}.yaml": data for dep, data in docs.items()}
    if change == "extra":
        files["d-3.yaml"] = doc("d-3")
    elif change == "missing":
        del files["d-2.yaml"]
    else:
        files["d-2.yaml"] = docs["d-1"]
    archive = make_bundle(files)
    refs = [
        {
            "deploymentId": dep,
            "digest": digest(data),
            "url": f"/api/v1/deployments/{dep}/{digest(data)}",
        }
        for dep, data in docs.items()
    ]
    bundle = {
        "mediaType": "application/vnd.margo.bundle.v1+tar+gzip",
        "digest": digest(archive),
        "url": f"/api/v1/bundles/{digest(archive)}",
    }
    server.replace(bundle["url"], archive)
    server.serve_manifest(
        json.dumps({"manifestVersion": 1, "bundle": bundle, "deployments": refs}).encode()
    )
    with pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == "WFM_BUNDLE_INVALID"
    assert not (state / "wfm" / "accepted.json").exists()


def test_a_document_the_wfm_no_longer_has_is_a_transient_error(server, state, pool):
    data = doc("d-1")
    ref = {
        "deploymentId": "d-1",
        "digest": digest(data),
        "url": f"/api/v1/deployments/d-1/{digest(data)}",
    }
    server.serve_manifest(
        json.dumps({"manifestVersion": 1, "bundle": None, "deployments": [ref]}).encode()
    )
    with pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == "WFM_DOCUMENT_MISSING" and isinstance(err.value, TransientError)


def test_a_wfm_that_is_down_is_a_transient_error(ca, state, pool):
    with WfmServer(ca) as server:
        url = server.url
    with pytest.raises(SourceError) as err:
        WfmSource(url, state, pool).poll()
    assert err.value.code == "WFM_UNREACHABLE" and isinstance(err.value, TransientError)


def test_a_wfm_with_a_certificate_from_another_ca_is_refused(server, tmp_path, state):
    other = make_ca(tmp_path / "other")
    pool = pools.Pools(ca_file=str(other.ca_file), timeout=10.0, retries=False)
    with pool, pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == "WFM_TLS_FAILED"


def test_what_the_wfm_serves_becomes_the_one_model(server, state, pool):
    ids = ["7f1c1a52-0c5e-4f55-9a7e-1d2b3c4d5e6f", "0b9e3f6a-2d4c-4e8f-8a1b-2c3d4e5f6a7b"]
    server.publish({dep: doc(dep) for dep in ids}, 1)
    src = source(server, state, pool)
    snap = src.snapshot(src.poll().revision)
    parsed = desired.parse_files(snap.files, device_id="dev-1")
    assert not parsed.failures
    assert sorted(d.id for d in parsed.deployments) == sorted(ids)
    assert {c.package_location for d in parsed.deployments for c in d.components} == {
        "oci://registry.example/nginx:1.0.0"
    }
    elsewhere = desired.parse_files(snap.files, device_id="dev-2")
    assert {f.error.code for f in elsewhere.failures} == {"WRONG_DEVICE"}


def test_a_document_listed_under_another_deployment_id_fails_that_deployment(server, state, pool):
    # The manifest lists one and three; one's document says it is two (which may run
    # elsewhere): nothing is installed under two and one fails with a code the WFM hears.
    one, two, three = (f"7f1c1a52-0c5e-4f55-9a7e-1d2b3c4d5e6{n}" for n in "123")
    server.publish({one: doc(two), three: doc(three)}, 1)
    src = source(server, state, pool)
    snap = src.snapshot(src.poll().revision)
    parsed = desired.parse_files(snap.files, device_id="dev-1", file_ids=snap.file_ids)
    assert [d.id for d in parsed.deployments] == [three]
    [failure] = parsed.failures
    assert failure.deployment_id == one
    assert failure.error.code == "DEPLOYMENT_ID_MISMATCH"
    assert repr(two) in str(failure.error) and repr(one) in str(failure.error)


class Crash(BaseException):
    """Stands for the process dying at a step of a state write."""


@pytest.mark.parametrize("step", ["tmp-written", "tmp-synced", "prev-kept"])
def test_a_crash_while_recording_leaves_the_previous_manifest_accepted(
    server, state, pool, monkeypatch, step
):
    server.publish({"d-1": doc("d-1")}, 1)
    source(server, state, pool).poll()
    server.publish({"d-1": doc("d-1", "httpd"), "d-2": doc("d-2")}, 2)

    def dying(root, **kw):
        def fault(name: str) -> None:
            if name == step:
                raise Crash(name)

        return StateStore(root, fault=fault)

    monkeypatch.setattr(wfmsource, "StateStore", dying)
    with pytest.raises(Crash):
        source(server, state, pool).poll()
    monkeypatch.undo()
    again = source(server, state, pool)
    assert again.held_revision() == "1"
    assert again.snapshot("1").files["d-1.yaml"] == doc("d-1")
    mark = len(server.requests())
    assert again.poll().revision == "2"
    assert paths(server, mark) == ["/api/v1/deployments"]  # its documents were already cached


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (403, "WFM_FORBIDDEN", True),
        (406, "WFM_NOT_ACCEPTABLE", False),
        (404, "WFM_NOT_FOUND", False),
        (503, "WFM_SERVER_ERROR", True),
        (429, "WFM_SERVER_ERROR", True),
    ],
)
def test_a_problem_answer_is_coded_and_its_title_and_detail_are_told(
    server, state, pool, status, code, transient
):
    problem = {"type": "https://docs.margo.org/x", "title": "No", "status": status, "detail": "why"}
    server.refuse = (status, problem)
    with pytest.raises(SourceError) as err:
        source(server, state, pool).poll()
    assert err.value.code == code
    assert isinstance(err.value, TransientError) is transient
    assert ": No: why" in err.value.message


class IdentityRefused(ssl.SSLError):
    """What the mTLS pool raises in the handshake when the WFM is not the expected SPIFFE ID."""

    code = "WFM_SERVER_ID_MISMATCH"


class RefusingPool:
    """A twin of the mTLS pool whose identity check fails before any request is sent."""

    def request(self, method, url, **kw):
        refused = IdentityRefused("the WFM certificate names spiffe://example.org/margo/wfm/other")
        raise urllib3.exceptions.MaxRetryError(None, url, urllib3.exceptions.SSLError(refused))


def test_a_wfm_with_the_wrong_identity_is_refused_with_the_pools_code(state):
    with pytest.raises(SourceError) as err:
        WfmSource("https://wfm.example/margo", state, RefusingPool()).poll()
    assert err.value.code == "WFM_SERVER_ID_MISMATCH"
    assert "spiffe://example.org/margo/wfm/other" in err.value.message
    assert not state.exists()  # nothing written either
