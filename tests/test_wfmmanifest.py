"""The State Manifest and bundle readers: whatever the WFM sends, a Manifest or a coded error."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from margo_lite import wfmmanifest
from margo_lite.devkit.wfmsim import digest, make_bundle
from margo_lite.errors import WfmError
from tests.support.hypo import examples

SETTINGS = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
D = "sha256:" + "ab" * 32
CODES = {"WFM_MANIFEST_INVALID", "WFM_URL_REFUSED", "WFM_TOO_LARGE"}


def ref(dep: str = "d-1", d: str = D) -> dict:
    return {"deploymentId": dep, "digest": d, "url": f"/api/v1/deployments/{dep}/{d}"}


def bundle_ref(d: str = D) -> dict:
    return {"mediaType": wfmmanifest.BUNDLE_MEDIA_TYPE, "digest": d, "url": f"/api/v1/bundles/{d}"}


def manifest(**over) -> bytes:
    value = {"manifestVersion": 1, "bundle": bundle_ref(), "deployments": [ref()]}
    value.update(over)
    return json.dumps(value).encode()


def code_of(body: bytes) -> str:
    with pytest.raises(WfmError) as err:
        wfmmanifest.parse(body)
    return err.value.code


def test_the_specs_example_manifest_reads():
    body = json.dumps(
        {
            "manifestVersion": 101,
            "bundle": {
                "mediaType": "application/vnd.margo.bundle.v1+tar+gzip",
                "digest": "sha256:" + "01" * 32,
                "url": "/api/v1/clients/1234/bundles/sha256:" + "01" * 32,
            },
            "deployments": [
                {
                    "deploymentId": "a3e2f5dc-912e-494f-8395-52cf3769bc06",
                    "digest": "sha256:" + "01" * 32,
                    "sizeBytes": 1200,
                    "url": "/api/v1/clients/1234/deployments/a3e2f5dc-912e-494f-8395-52cf3769bc06/"
                    "sha256:" + "01" * 32,
                }
            ],
        }
    ).encode()
    parsed = wfmmanifest.parse(body)
    assert parsed.version == 101
    assert parsed.deployments[0][0] == "a3e2f5dc-912e-494f-8395-52cf3769bc06"
    assert parsed.deployments[0][1].size == 1200
    assert parsed.bundle is not None and parsed.bundle.url.startswith("/api/v1/clients/1234/")


def test_an_empty_desired_state_has_a_null_bundle():
    parsed = wfmmanifest.parse(manifest(bundle=None, deployments=[]))
    assert parsed.bundle is None and parsed.deployments == ()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"\xff\xfe",
        b'{"manifestVersion": 1, "manifestVersion": 2, "bundle": null, "deployments": []}',
        manifest(manifestVersion=0),
        manifest(manifestVersion=-1),
        manifest(manifestVersion=2**64),
        manifest(manifestVersion=1.0),
        manifest(manifestVersion="1"),
        manifest(manifestVersion=True),
        b'{"manifestVersion": NaN, "bundle": null, "deployments": []}',
        b'{"manifestVersion": 1' + b"0" * 5000 + b', "bundle": null, "deployments": []}',
        json.dumps({"bundle": None, "deployments": []}).encode(),
        json.dumps({"manifestVersion": 1, "deployments": []}).encode(),
        json.dumps({"manifestVersion": 1, "bundle": None}).encode(),
        manifest(bundle=None, deployments=[ref(), ref()]),
        manifest(bundle=None, deployments=[ref("a"), ref("A")]),
        manifest(deployments=[]),  # a bundle with no deployments: an empty archive
        manifest(bundle={**bundle_ref(), "mediaType": "application/zip"}),
        manifest(bundle={"mediaType": wfmmanifest.BUNDLE_MEDIA_TYPE, "url": "/api/v1/b"}),
        manifest(bundle=[]),
        manifest(deployments={}),
        manifest(deployments=[[]]),
        manifest(deployments=[ref(d="sha512:" + "ab" * 64)]),
        manifest(deployments=[ref(d="sha256:" + "AB" * 32)]),
        manifest(deployments=[ref(d="sha256:" + "ab" * 31)]),
        manifest(deployments=[ref(d=" " + D)]),
        manifest(deployments=[{**ref(), "deploymentId": "../../etc"}]),
        manifest(deployments=[{**ref(), "deploymentId": ""}]),
        manifest(deployments=[{**ref(), "deploymentId": 7}]),
        manifest(deployments=[{**ref(), "sizeBytes": -1}]),
        manifest(deployments=[{**ref(), "sizeBytes": "12"}]),
        manifest(deployments=[{**ref(), "url": None}]),
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_a_hostile_manifest_is_refused_with_a_code(body):
    assert code_of(body) == "WFM_MANIFEST_INVALID"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/api/v1/x",
        "//evil.example/api/v1/x",
        "api/v1/x",
        "/api/v1/",
        "/api/v1/a/../../x",
        "/api/v1/a/./b",
        "/api/v1/%2E%2E/x",
        "/api/v1/a//b",
        "/api/v1/a?b",
        "/api/v1/a#b",
        "/api/v1/a b",
        "/api/v1/a\nHost: evil",
        "/api/v1/a\\b",
        "/api/v1/" + "a" * 3000,
    ],
)
def test_a_url_that_could_leave_the_wfm_is_refused(url):
    assert code_of(manifest(deployments=[{**ref(), "url": url}])) == "WFM_URL_REFUSED"


def test_a_manifest_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(wfmmanifest, "MAX_MANIFEST_BYTES", 100)
    assert code_of(manifest()) == "WFM_TOO_LARGE"


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.sampled_from([D, "/api/v1/deployments/x/" + D, wfmmanifest.BUNDLE_MEDIA_TYPE, "d-1"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "manifestVersion",
                    "bundle",
                    "deployments",
                    "deploymentId",
                    "digest",
                    "url",
                    "sizeBytes",
                    "mediaType",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@SETTINGS
@given(json_values)
def test_any_json_reads_as_a_manifest_or_a_coded_error(value):
    try:
        parsed = wfmmanifest.parse(json.dumps(value).encode())
    except WfmError as exc:
        assert exc.code in CODES
        return
    assert 1 <= parsed.version <= 2**64 - 1
    for dep, item in parsed.deployments:
        assert wfmmanifest.DEPLOYMENT_ID.fullmatch(dep)
        assert wfmmanifest.DIGEST.fullmatch(item.digest) and item.url.startswith("/api/v1/")


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_read_as_a_manifest_or_a_coded_error(body):
    try:
        wfmmanifest.parse(body)
    except WfmError as exc:
        assert exc.code in CODES


# --- bundles --------------------------------------------------------------------------------


def of(docs: dict[str, bytes]) -> wfmmanifest.Manifest:
    refs = [ref(dep, digest(data)) for dep, data in docs.items()]
    return wfmmanifest.parse(manifest(deployments=refs))


DOCS = {"d-1": b"id: d-1\n", "d-2": b"id: d-2\n"}


def test_a_bundle_gives_the_documents_by_digest_whatever_their_names():
    archive = make_bundle({"first.yaml": DOCS["d-1"], "./second.yml": DOCS["d-2"]})
    found = wfmmanifest.read_bundle(archive, of(DOCS))
    assert found == {digest(data): data for data in DOCS.values()}


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return raw.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data


@pytest.mark.parametrize(
    "archive",
    [
        b"",
        b"not gzip at all",
        gzip.compress(b"not a tar"),
        gzip.compress(tar_of(member("d-1.yaml", DOCS["d-1"]), member("d-1.yaml", DOCS["d-2"]))),
        gzip.compress(tar_of(member("a/d-1.yaml", DOCS["d-1"]), member("d-2.yaml", DOCS["d-2"]))),
        gzip.compress(tar_of(member("../d-1.yaml", DOCS["d-1"]), member("d-2.yaml", DOCS["d-2"]))),
        gzip.compress(tar_of(member("/d-1.yaml", DOCS["d-1"]), member("d-2.yaml", DOCS["d-2"]))),
        gzip.compress(
            tar_of(
                member("d-1.yaml", kind=tarfile.SYMTYPE, link="/etc/passwd"),
                member("d-2.yaml", DOCS["d-2"]),
            )
        ),
        gzip.compress(
            tar_of(member("d-1.yaml", kind=tarfile.FIFOTYPE), member("d-2.yaml", DOCS["d-2"]))
        ),
        gzip.compress(tar_of(member("sub", kind=tarfile.DIRTYPE), member("d-2.yaml", DOCS["d-2"]))),
        make_bundle(DOCS)[:-20],  # cut short
        make_bundle(DOCS) + b"trailing",
        make_bundle(DOCS) + make_bundle(DOCS),  # two gzip members
        make_bundle({"d-1.yaml": DOCS["d-1"]}),  # one missing
        make_bundle({**{f"{k}.yaml": v for k, v in DOCS.items()}, "x.yaml": b"x"}),  # one extra
        make_bundle({"d-1.yaml": DOCS["d-1"], "d-2.yaml": DOCS["d-1"]}),  # the same twice
    ],
    ids=lambda archive: f"{len(archive)}-bytes",  # gzip stamps the time: not in the id
)
def test_a_hostile_bundle_is_refused_with_a_code(archive):
    with pytest.raises(WfmError) as err:
        wfmmanifest.read_bundle(archive, of(DOCS))
    assert err.value.code == "WFM_BUNDLE_INVALID"


def test_a_bundle_that_decompresses_beyond_the_budget_is_refused():
    bomb = gzip.compress(tar_of(member("d-1.yaml", b"\0" * (8 << 20))))
    assert len(bomb) < 64 << 10
    with pytest.raises(WfmError) as err:
        wfmmanifest.read_bundle(bomb, of(DOCS), budget=1 << 20)
    assert err.value.code == "WFM_TOO_LARGE"


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_read_as_a_bundle_or_a_coded_error(noise):
    for archive in (noise, gzip.compress(noise, mtime=0)):
        try:
            wfmmanifest.read_bundle(archive, of(DOCS))
        except WfmError as exc:
            assert exc.code in {"WFM_BUNDLE_INVALID", "WFM_TOO_LARGE"}
