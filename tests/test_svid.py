"""X.509-SVIDs: the DER reader, the SPIFFE rules, and the configured files as check-config
sees them. Certificates are real ones from `openssl` (a throwaway trust domain)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from margo_lite import svid, valueclass
from margo_lite.config import WosConfig
from margo_lite.devkit.svidca import SvidCA, client_id, wfm_id
from tests.conftest import base_config


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SvidCA:
    return SvidCA(tmp_path_factory.mktemp("trust-domain"))


def _der(path: Path) -> bytes:
    return svid.first_pem_cert(path.read_bytes())


def test_the_reader_finds_serial_and_spiffe_id_of_a_real_svid(ca):
    device = ca.device("gw-7")
    leaf = svid.read_leaf(_der(device.cert))
    assert leaf.serial == device.serial
    assert svid.spiffe_id(leaf) == client_id("gw-7")
    assert svid.server_id_for(client_id("gw-7")) == wfm_id()


@pytest.mark.parametrize(
    "uris, says",
    [
        ((), "exactly one URI SAN, this one has 0"),
        ((client_id("a"), client_id("b")), "exactly one URI SAN, this one has 2"),
        (("https://wfm.example/margo",), "not a SPIFFE ID"),
        (("spiffe://margo-lite.test",), "not a SPIFFE ID"),
        (("spiffe://margo-lite.test/margo/../wfm",), "not a SPIFFE ID"),
    ],
)
def test_certificates_that_are_not_svids_are_refused(ca, uris, says):
    issued = ca.issue(f"not-svid-{len(uris)}-{abs(hash(uris))}", uris)
    with pytest.raises(svid.SvidError, match=says):
        svid.spiffe_id(svid.read_leaf(_der(issued.cert)))


def test_a_ca_certificate_is_not_an_svid_even_with_one_spiffe_id(ca):
    issued = ca.issue("ca-like", [wfm_id()], ca=True)
    leaf = svid.read_leaf(_der(issued.cert))
    assert leaf.is_ca and leaf.signs_certs
    with pytest.raises(svid.SvidError, match="CA certificate"):
        svid.spiffe_id(leaf)


def test_the_wfm_must_be_exactly_the_expected_identity(ca):
    der = _der(ca.wfm("wfm-check").cert)
    assert svid.check_peer(der, wfm_id()) == wfm_id()
    for other in (wfm_id(wfm="wfm-2"), wfm_id(trust_domain="other.test"), wfm_id() + "/x"):
        with pytest.raises(svid.SvidError, match="not the expected"):
            svid.check_peer(der, other)


def test_an_identity_that_is_not_a_wfm_client_needs_server_id():
    for own in ("spiffe://td/margo/wfm/w1", "spiffe://td/device/gw/client/", "spiffe://td/x"):
        with pytest.raises(svid.SvidError, match=r"set wos\.server_id"):
            svid.server_id_for(own)
    assert svid.expected_server("spiffe://td/x", "spiffe://td/margo/wfm/w1") == (
        "spiffe://td/margo/wfm/w1"
    )


def test_hostile_der_is_a_coded_refusal_never_a_crash(ca):
    """Every truncation and many bit flips of a real certificate: SvidError or a Leaf."""
    der = _der(ca.device("gw-fuzz").cert)
    rng = random.Random(7)
    cases = [der[:n] for n in range(0, len(der), 7)] + [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff"]
    for _ in range(3000):
        flipped = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        cases.append(bytes(flipped))
    refused = 0
    for case in cases:
        try:
            svid.read_leaf(case)
        except svid.SvidError:
            refused += 1
    assert refused > len(der) // 7  # every truncation at least


# --- the configured files ------------------------------------------------------------------


def test_load_identity_names_each_problem_with_a_code(ca, tmp_path):
    device = ca.device("gw-files")
    other = ca.device("gw-other")
    own, _context = svid.load_identity(svid.Files(str(device.cert), str(device.key)))
    assert own == client_id("gw-files")
    combined = tmp_path / "combined.pem"
    combined.write_bytes(device.cert.read_bytes() + device.key.read_bytes())
    assert svid.load_identity(svid.Files(str(combined), None))[0] == own
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_text("not a key\n")
    no_san = ca.issue("files-no-san", [])
    for files, code in [
        (svid.Files(str(device.cert), str(other.key)), "SVID_KEY_MISMATCH"),
        (svid.Files(str(device.cert), str(tmp_path / "missing.key")), "SVID_KEY_UNREADABLE"),
        (svid.Files(str(device.cert), str(unreadable)), "SVID_KEY_UNREADABLE"),
        (svid.Files(str(no_san.cert), str(no_san.key)), "SVID_URI_SAN"),
        (svid.Files(str(tmp_path / "missing.pem"), str(device.key)), "SVID_CERT_UNREADABLE"),
    ]:
        with pytest.raises(svid.SvidConfigError) as caught:
            svid.load_identity(files)
        assert caught.value.code == code, files
        assert "PRIVATE KEY" not in str(caught.value)


def _draft_config(tmp_path: Path, cert: Path, key: Path) -> dict:
    data = base_config(tmp_path)
    data["wos"].update(client_cert=str(cert), client_key=str(key))
    return data


def test_check_config_refuses_a_key_that_is_not_the_certificates(ca, tmp_path, cli, config_file):
    device, other = ca.device("gw-cc"), ca.device("gw-cc2")
    good = cli(
        "-c", str(config_file(_draft_config(tmp_path, device.cert, device.key))), "check-config"
    )
    assert good.returncode == 0, good.stderr
    bad = cli(
        "-c", str(config_file(_draft_config(tmp_path, device.cert, other.key))), "check-config"
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "[SVID_KEY_MISMATCH]" in lines[0] and "wos.client_key" in lines[0]
    assert "PRIVATE KEY" not in bad.stderr + bad.stdout


def test_check_config_refuses_an_unreadable_key(ca, tmp_path, cli, config_file):
    device = ca.device("gw-cc3")
    garbage = tmp_path / "garbage.key"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n"
    )
    result = cli(
        "-c", str(config_file(_draft_config(tmp_path, device.cert, garbage))), "check-config"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[SVID_KEY_UNREADABLE]" in lines[0], result.stderr


_V1_KEYS = {"api", "server_id"} <= {f.name for f in valueclass.fields(WosConfig)}


@pytest.mark.skipif(not _V1_KEYS, reason="wos.api and wos.server_id are not configuration keys yet")
def test_check_config_v1_names_the_identities_and_refuses_a_certificate_without_one(
    ca, tmp_path, cli, config_file
):
    device, no_san = ca.device("gw-v1"), ca.issue("cc-no-san", [])
    data = _draft_config(tmp_path, device.cert, device.key)
    data["wos"].update(api="v1", url="https://127.0.0.1:9/margo")
    good = cli("-c", str(config_file(data)), "check-config")
    assert good.returncode == 0, good.stderr
    assert f"identity {client_id('gw-v1')}, expects the WFM {wfm_id()}" in good.stdout
    data["wos"].update(client_cert=str(no_san.cert), client_key=str(no_san.key))
    bad = cli("-c", str(config_file(data)), "check-config")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "[SVID_URI_SAN]" in lines[0], bad.stderr
