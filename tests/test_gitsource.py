"""The Git source against a real smart-HTTP server (C git's http-backend behind a bridge)."""

from __future__ import annotations

import fcntl
import io
import itertools
import os
import subprocess
from pathlib import Path

import pytest

from margo_lite import errors, gitsource, logs
from margo_lite.config import GitConfig
from margo_lite.errors import ConfigError, GitTransientError, SourceError
from margo_lite.git import store
from margo_lite.gitsource import GitSource
from tests.support.gitserver import (
    DEPLOYMENT,
    BasicAuth,
    BearerAuth,
    Fault,
    GitServer,
    Upstream,
    make_test_ca,
    refused_url,
)

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    with GitServer(root) as srv:
        yield srv


@pytest.fixture(params=["v2"])
def protocol(request, server):
    """The protocol the server speaks; tests that also take "v0" parametrize it indirectly."""
    server.protocol_v2 = request.param == "v2"
    yield request.param
    server.protocol_v2 = True


BOTH_PROTOCOLS = pytest.mark.parametrize("protocol", ["v2", "v0"], indirect=True)


@pytest.fixture
def upstream(server, protocol):
    srv_repo = Upstream(server.root / f"dev{next(_names)}.git")
    srv_repo.commit({"apps/a.yaml": DEPLOYMENT.format(n=1), "README": "hello\n"}, "first")
    yield srv_repo
    server.auth = None
    server.fault = None
    server.fault_skip = 0


@pytest.fixture
def make_source(tmp_path, server, upstream):
    def make(**options) -> GitSource:
        options.setdefault("url", server.url(upstream.path.name))
        options.setdefault("timeout", 5.0)
        return GitSource(GitConfig(**options), tmp_path / "state")

    return make


def disk_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file below `folder` with its size, mtime and inode: any write changes this."""
    found = {}
    for path in folder.rglob("*"):
        st = path.lstat()
        found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def state_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- polls, fetches, snapshots --------------------------------------------------------------


@BOTH_PROTOCOLS
def test_first_poll_fetches_and_snapshot_reads_the_folder(make_source, upstream):
    upstream.commit({"apps/sub/b.yml": "b: 1\n", "elsewhere.yaml": "x: 1\n"})
    source = make_source(path="apps")
    assert source.held_revision() is None
    result = source.poll()
    assert result == gitsource.PollResult(upstream.tip(), changed=True)
    assert source.held_revision() == upstream.tip()
    snap = source.snapshot(result.revision)
    assert snap.revision == upstream.tip()
    assert dict(snap.files) == {"a.yaml": DEPLOYMENT.format(n=1).encode(), "sub/b.yml": b"b: 1\n"}


def test_idle_poll_is_one_small_request_and_writes_nothing(make_source, upstream, server, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-1\n")
    server.auth = BasicAuth("device", "s3cret-token-1")
    source = make_source(username="device", token_file=str(token))
    source.poll()
    source.poll()  # the first poll after start also asked for the server's capabilities
    before = disk_state(tmp_path / "state")
    server.reset_counters()
    assert source.poll() == gitsource.PollResult(upstream.tip(), changed=False)
    assert server.requests == 1
    assert server.bytes_sent + server.bytes_received <= 1024, server.log
    assert disk_state(tmp_path / "state") == before


def test_a_new_process_polls_with_one_request_and_the_cache_is_written_once(
    make_source, upstream, server, tmp_path
):
    make_source().poll()  # the first process ever asks for the capabilities
    noted = tmp_path / "state" / "git" / gitsource.PROTOCOL_FILE
    assert noted.exists()
    before = disk_state(tmp_path / "state")
    for _ in range(2):  # later processes (a timer's `margo-lite once`)
        server.reset_counters()
        assert make_source().poll() == gitsource.PollResult(upstream.tip(), changed=False)
        assert server.requests == 1, server.log
    assert disk_state(tmp_path / "state") == before


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b'{"url": 1}', b'{"url": "x", "capabilities": {}}', b"\xff" * 99],
)
def test_a_damaged_or_foreign_capability_cache_is_asked_again(
    make_source, upstream, server, tmp_path, content
):
    make_source().poll()
    noted = tmp_path / "state" / "git" / gitsource.PROTOCOL_FILE
    noted.write_bytes(content)
    server.reset_counters()
    assert make_source().poll() == gitsource.PollResult(upstream.tip(), changed=False)
    assert server.requests == 2  # the capabilities again, then ls-refs
    assert b"ls-refs" in noted.read_bytes()


def test_capabilities_the_server_lost_are_asked_again_within_the_poll(
    make_source, upstream, server, tmp_path
):
    make_source().poll()
    server.protocol_v2 = False  # the server now speaks only v0: a v2 request is refused
    try:
        source = make_source()
        assert source.poll() == gitsource.PollResult(upstream.tip(), changed=False)
    finally:
        server.protocol_v2 = True


@pytest.mark.parametrize("protocol", ["v0"], indirect=True)
def test_a_server_speaking_only_protocol_v0_costs_one_request_per_idle_poll(
    make_source, upstream, server, tmp_path
):
    source = make_source()
    source.poll()
    before = disk_state(tmp_path / "state")
    server.reset_counters()
    assert source.poll() == gitsource.PollResult(upstream.tip(), changed=False)
    assert server.requests == 1
    assert server.bytes_sent + server.bytes_received <= 1024, server.log  # one branch only
    assert disk_state(tmp_path / "state") == before


def test_idle_poll_stays_one_small_request_with_2000_other_refs(make_source, upstream, server):
    upstream.add_refs(2000)
    source = make_source()
    source.poll()
    server.reset_counters()
    assert not source.poll().changed
    assert server.requests == 1
    assert server.bytes_sent + server.bytes_received <= 1024, server.log


def big_change(n: int) -> dict[str, str]:
    return {f"apps/app{i}.yaml": DEPLOYMENT.format(n=n * 100 + i) for i in range(5)}


@pytest.mark.parametrize(
    "change",
    [{"apps/a.yaml": DEPLOYMENT.format(n=2)}, big_change(3)],
    ids=["one-file-edit", "five-new-files"],
)
def test_a_change_costs_no_more_than_c_git_fetch_depth_1(
    make_source, upstream, server, tmp_path, change
):
    for n in range(3):  # some history, as a real device repository has
        upstream.commit(big_change(10 + n))
    source = make_source()
    source.poll()
    clone = tmp_path / "c-git"
    git = ["git", "-c", "protocol.version=2"]
    subprocess.run([*git, "clone", "-q", "--bare", "--depth=1", server.url(upstream.path.name),
                    str(clone)], check=True, timeout=60)  # fmt: skip
    upstream.commit(change)

    server.reset_counters()
    subprocess.run([*git, "-C", str(clone), "fetch", "-q", "--depth=1", "origin", "main"],
                   check=True, timeout=60)  # fmt: skip
    c_git = (server.requests, server.bytes_sent, server.bytes_received)
    server.reset_counters()
    assert source.poll().changed
    ours = (server.requests, server.bytes_sent, server.bytes_received)

    assert ours[1] + ours[2] <= 1.05 * (c_git[1] + c_git[2]), (ours, c_git)
    assert ours[1] <= 1.05 * c_git[1], (ours, c_git)
    files = source.snapshot(upstream.tip()).files
    assert all(files[name] == text.encode() for name, text in change.items())


@BOTH_PROTOCOLS
def test_repeated_shallow_fetches_send_only_the_difference(make_source, upstream, server, tmp_path):
    """Each fetch is depth 1 with the held tip as "have" and "shallow": dulwich 0.21.2
    fails a fetch into a shallow repository without an explicit depth, and a tip kept
    outside refs/heads makes dulwich's own client send no "have" and download it all."""
    upstream.commit({f"big/{i}.bin": os.urandom(4000).hex() for i in range(8)})
    source = make_source()
    server.reset_counters()
    source.poll()
    first = server.bytes_sent
    for n in range(5):
        upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=20 + n)})
        server.reset_counters()
        assert source.poll().changed
        assert server.bytes_sent < first / 10, server.log
        assert (
            source.snapshot(upstream.tip()).files["apps/a.yaml"]
            == DEPLOYMENT.format(n=20 + n).encode()
        )
    assert (tmp_path / "state/git/repo/refs/heads/desired").read_text().strip() == (upstream.tip())


@BOTH_PROTOCOLS
def test_force_push_and_orphan_history(make_source, upstream):
    source = make_source()
    first = upstream.tip()
    upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=2)})
    source.poll()
    upstream.set_branch(first)  # force-push back
    assert source.poll() == gitsource.PollResult(first, changed=True)
    assert source.snapshot(first).files["apps/a.yaml"] == DEPLOYMENT.format(n=1).encode()
    orphan = upstream.commit({"new.yaml": "fresh: true\n"}, orphan=True)
    assert source.poll() == gitsource.PollResult(orphan, changed=True)
    assert dict(source.snapshot(orphan).files) == {"new.yaml": b"fresh: true\n"}


@BOTH_PROTOCOLS
def test_deleted_branch_keeps_the_last_state(make_source, upstream):
    source = make_source()
    tip = source.poll().revision
    upstream.delete_branch()
    with pytest.raises(SourceError) as err:
        source.poll()
    assert err.value.code == "GIT_BRANCH_MISSING"
    assert not isinstance(err.value, GitTransientError)
    assert source.held_revision() == tip
    assert "apps/a.yaml" in source.snapshot(tip).files


def test_deleted_repository_is_not_found(make_source, upstream):
    source = make_source()
    tip = source.poll().revision
    upstream.path.rename(upstream.path.with_name("gone.git"))
    try:
        with pytest.raises(SourceError) as err:
            source.poll()
        assert err.value.code == "GIT_NOT_FOUND"
        assert source.held_revision() == tip
    finally:
        upstream.path.with_name("gone.git").rename(upstream.path)


# --- auth -----------------------------------------------------------------------------------


@BOTH_PROTOCOLS
def test_bearer_token_rotation_without_restart(make_source, upstream, server, tmp_path):
    token = tmp_path / "token"
    token.write_text("first-token-abc")
    server.auth = BearerAuth("first-token-abc")
    source = make_source(auth="bearer", token_file=str(token))
    source.poll()
    server.auth = BearerAuth("second-token-xyz")  # the WOS rotated it
    upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=5)})
    with pytest.raises(SourceError) as err:
        source.poll()
    assert err.value.code == "GIT_AUTH_FAILED"
    assert "first-token-abc" not in str(err.value)
    token.write_text("second-token-xyz\n")
    assert source.poll() == gitsource.PollResult(upstream.tip(), changed=True)


def test_credentials_never_reach_the_disk(make_source, upstream, server, tmp_path):
    """Newer dulwich writes a password given in the URL into the repository config; here
    the URL never carries one, and nothing under state_dir holds the token."""
    token = tmp_path / "token"
    token.write_text("very-secret-value-42")
    server.auth = BasicAuth("device", "very-secret-value-42")
    source = make_source(username="device", token_file=str(token))
    upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=6)})
    source.poll()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"very-secret-value-42" not in data, path
            assert b"dmVyeS1zZWNyZXQtdmFsdWUtNDI" not in data, path  # its base64


def test_wrong_basic_password_is_an_auth_error(make_source, server, tmp_path):
    token = tmp_path / "token"
    token.write_text("wrong")
    server.auth = BasicAuth("device", "right")
    with pytest.raises(SourceError) as err:
        make_source(username="device", token_file=str(token)).poll()
    assert err.value.code == "GIT_AUTH_FAILED"


def test_unreadable_token_file(make_source, tmp_path):
    with pytest.raises(SourceError) as err:
        make_source(auth="bearer", token_file=str(tmp_path / "missing")).poll()
    assert err.value.code == "GIT_TOKEN_UNREADABLE"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "transient"),
    [
        (Fault.UNAUTHORIZED, "GIT_AUTH_FAILED", False),
        (Fault.FORBIDDEN, "GIT_AUTH_FAILED", False),
        (Fault.NOT_FOUND, "GIT_NOT_FOUND", False),
        (Fault.SERVER_ERROR, "GIT_SERVER_ERROR", True),
        (Fault.STALL, "GIT_TIMEOUT", True),
        (Fault.DROP, "GIT_UNREACHABLE", True),
    ],
)
def test_http_faults_on_poll(make_source, server, fault, code, transient):
    server.fault = fault
    with pytest.raises(SourceError) as err:
        make_source(timeout=0.5).poll()
    assert err.value.code == code
    assert isinstance(err.value, GitTransientError) == transient
    assert errors.family(err.value) is (errors.TransientError if transient else errors.StalledError)
    server.release_stalled()


@BOTH_PROTOCOLS
@pytest.mark.parametrize("fault", [Fault.TRUNCATE, Fault.CORRUPT, Fault.STALL])
def test_broken_fetch_keeps_the_held_commit(make_source, upstream, server, fault):
    source = make_source(timeout=0.5)
    held = source.poll().revision
    upstream.commit({"big.txt": os.urandom(20000).hex()})
    server.fault, server.fault_skip = fault, 1  # ls-refs passes, the fetch breaks
    with pytest.raises(GitTransientError) as err:
        source.poll()
    assert err.value.code == {Fault.STALL: "GIT_TIMEOUT"}.get(fault, "GIT_PACK_INVALID")
    server.release_stalled()
    assert source.held_revision() == held
    server.fault = None
    assert source.poll().changed
    assert source.snapshot(upstream.tip()).files["big.txt"]


def test_connection_refused_and_dns_failure(tmp_path):
    for url, why in (
        (refused_url(), "Connection refused"),
        ("http://no-such-host.invalid/dev.git", "cannot resolve the host name"),
    ):
        with pytest.raises(GitTransientError) as err:
            GitSource(GitConfig(url=url, timeout=5), tmp_path).poll()
        assert err.value.code == "GIT_UNREACHABLE"
        assert why in str(err.value)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    ca = make_test_ca(tmp_path_factory.mktemp("ca"))
    root = tmp_path_factory.mktemp("tls-srv")
    with GitServer(root, tls=ca) as srv:
        yield srv, ca


def test_tls_with_a_test_ca(tls_server, tmp_path):
    srv, ca = tls_server
    upstream = Upstream(srv.root / "dev.git")
    upstream.commit({"a.yaml": "a: 1\n"})
    cfg = GitConfig(url=srv.url(), ca_file=str(ca.ca_cert), timeout=5)
    assert GitSource(cfg, tmp_path / "ok").poll().changed
    with pytest.raises(SourceError) as err:  # the system store does not know the test CA
        GitSource(GitConfig(url=srv.url(), timeout=5), tmp_path / "no").poll()
    assert err.value.code == "GIT_TLS_FAILED"
    assert not (tmp_path / "no").exists()


# --- local repositories, bounds, configuration -----------------------------------------------


def test_local_path_and_file_url(tmp_path):
    upstream = Upstream(tmp_path / "up.git")
    upstream.commit({"a.yaml": "a: 1\n"})
    for url in (str(upstream.path), upstream.path.as_uri()):
        source = GitSource(GitConfig(url=url), tmp_path / url.replace("/", "_"))
        assert source.poll() == gitsource.PollResult(upstream.tip(), changed=True)
        assert not source.poll().changed
        assert dict(source.snapshot(upstream.tip()).files) == {"a.yaml": b"a: 1\n"}
    with pytest.raises(SourceError) as err:
        GitSource(GitConfig(url=str(tmp_path / "nothing")), tmp_path / "s").poll()
    assert err.value.code == "GIT_NOT_FOUND"


def commit_chain(upstream: Upstream, count: int) -> list[str]:
    """`count` commits on top of main, each changing one of ten files, made at once by
    fast-import; returned oldest first (main's tip first)."""
    script = []
    for n in range(count):
        data = DEPLOYMENT.format(n=1000 + n).encode()
        script.append(
            f"commit refs/heads/chain\ncommitter WOS <wos@example.com> {1700000000 + n} +0000\n"
            f"data 6\nchange\n"
            + ("from refs/heads/main^0\n" if n == 0 else "")
            + f"M 100644 inline apps/app{n % 10}.yaml\ndata {len(data)}\n"
        )
        script.append(data.decode() + "\n")
    upstream.git("fast-import", "--quiet", input="".join(script).encode())
    chain = upstream.git("rev-list", "--reverse", "chain").split()
    assert len(chain) == count + 1
    return chain


@pytest.mark.parametrize(
    ("count", "transport"),
    [
        (60, "local"),
        (60, "http"),
        pytest.param(1000, "http", marks=pytest.mark.slow),
    ],
)
def test_state_stays_bounded_as_commits_go_by(tmp_path, server, count, transport):
    """Fetched one by one, however many commits: at most the tip's objects plus
    COMPACT_AFTER_PACKS changes are held (over HTTP, thin packs completed locally)."""
    upstream = Upstream(server.root / f"dev{next(_names)}.git")
    upstream.commit({f"apps/app{i}.yaml": DEPLOYMENT.format(n=i) for i in range(10)})
    chain = commit_chain(upstream, count)
    url = server.url(upstream.path.name) if transport == "http" else str(upstream.path)
    source = GitSource(GitConfig(url=url), tmp_path / "state")
    source.poll()
    after_first = state_bytes(tmp_path / "state")
    peak = 0
    for sha in chain[1:]:
        upstream.set_branch(sha)
        assert source.poll().changed
        peak = max(peak, state_bytes(tmp_path / "state"))
    last = count - 1
    expected = DEPLOYMENT.format(n=1000 + last).encode()
    assert source.snapshot(chain[-1]).files[f"apps/app{last % 10}.yaml"] == expected
    # Bound: the tip's objects plus COMPACT_AFTER_PACKS small changes (pack + index each).
    assert peak < after_first + store.COMPACT_AFTER_PACKS * 4096 + 16384, peak
    assert len(list((tmp_path / "state").rglob("*.pack"))) <= store.COMPACT_AFTER_PACKS + 1
    fsck(tmp_path / "state" / "git" / "repo")


def test_snapshot_size_bound(make_source, upstream, monkeypatch):
    upstream.commit({"apps/big.yaml": "x" * 5000})
    source = make_source(path="apps")
    source.poll()
    monkeypatch.setattr(store, "MAX_SNAPSHOT_BYTES", 4096)
    with pytest.raises(SourceError) as err:
        source.snapshot(upstream.tip())
    assert err.value.code == "GIT_TOO_LARGE"


def test_missing_folder_is_empty_and_a_file_is_an_error(make_source, upstream):
    source = make_source(path="not/there")
    tip = source.poll().revision
    assert dict(source.snapshot(tip).files) == {}
    with pytest.raises(SourceError) as err:
        make_source(path="README").snapshot(tip)
    assert err.value.code == "GIT_PATH_INVALID"


def test_unknown_commit(make_source):
    source = make_source()
    source.poll()
    with pytest.raises(SourceError) as err:
        source.snapshot("0" * 40)
    assert err.value.code == "GIT_COMMIT_MISSING"


def test_damaged_local_repository_is_fetched_again(make_source, upstream, tmp_path):
    source = make_source()
    source.poll()
    ref = tmp_path / "state" / "git" / "repo" / "refs" / "heads" / "desired"
    ref.write_bytes(b"\x00garbage")
    (tmp_path / "state" / "git" / "repo.new").mkdir()  # a creation cut short
    assert source.held_revision() is None
    assert source.poll().changed
    assert source.held_revision() == upstream.tip()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"url": "https://user:pw@example.com/x.git"}, "git.url"),
        ({"url": "ssh://git@example.com/x.git"}, "git.url"),
        ({"url": "file://otherhost/x.git"}, "git.url"),
        ({"url": "https://example.com/x.git", "branch": "a..b"}, "git.branch"),
        ({"url": "https://example.com/x.git", "path": "a/../../b"}, "git.path"),
        ({"url": "https://example.com/x.git", "token_file": "/t"}, "git.username"),
    ],
)
def test_configuration_mistakes(options, key, tmp_path):
    with pytest.raises(ConfigError) as err:
        GitSource(GitConfig(**options), tmp_path)
    assert err.value.key == key
    assert "pw" not in str(err.value)


def test_damaged_pack_is_discarded_and_fetched_again(make_source, upstream, tmp_path):
    upstream.commit({"apps/big.yaml": os.urandom(3000).hex()})
    source = make_source()
    tip = source.poll().revision
    for pack in (tmp_path / "state").rglob("*.pack"):
        data = bytearray(pack.read_bytes())
        for i in range(12, len(data) - 20, 7):  # past the header, before the checksum
            data[i] ^= 0x55
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
    with pytest.raises(GitTransientError) as err:
        source.snapshot(tip)
    assert err.value.code == "GIT_STORE_CORRUPT"
    assert source.held_revision() is None
    assert source.poll() == gitsource.PollResult(tip, changed=True)
    assert source.snapshot(tip).files["apps/big.yaml"]


def test_recorded_tip_missing_from_the_store_is_damage(make_source, upstream, tmp_path):
    source = make_source()
    tip = source.poll().revision
    for pack in (tmp_path / "state").rglob("pack-*"):
        pack.unlink()
    with pytest.raises(GitTransientError) as err:
        source.snapshot(tip)
    assert err.value.code == "GIT_STORE_CORRUPT"
    assert source.poll().changed
    assert source.snapshot(tip).files


def test_the_token_never_reaches_a_log_line(make_source, upstream, server, tmp_path):
    stream = io.StringIO()
    logger = logs.setup("DEBUG", stream=stream)
    try:
        token = tmp_path / "token"
        token.write_text("log-secret-token-77")
        server.auth = BasicAuth("device", "other")
        source = make_source(username="device", token_file=str(token))
        with pytest.raises(SourceError) as err:
            source.poll()
        logs.get(__name__).error("poll failed: %s (Authorization: %s)", err.value,
                                 "Basic " + "ZGV2aWNlOmxvZy1zZWNyZXQtdG9rZW4tNzc=")  # fmt: skip
        server.auth = BasicAuth("device", "log-secret-token-77")
        upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=9)})
        source.poll()
    finally:
        logger.handlers.clear()
    output = stream.getvalue()
    assert "log-secret-token-77" not in output
    assert "ZGV2aWNlOmxvZy1zZWNyZXQtdG9rZW4tNzc=" not in output
    assert "moved to" in output


def test_a_second_process_holding_the_repository_makes_a_fetch_wait(
    make_source, upstream, tmp_path, monkeypatch
):
    source = make_source()
    tip = source.poll().revision
    upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=11)})
    monkeypatch.setattr(store, "LOCK_WAIT", 0.3)
    fd = os.open(tmp_path / "state" / "git" / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: flock sees another holder
        for step in (source.poll, lambda: source.snapshot(tip)):
            with pytest.raises(GitTransientError) as err:
                step()
            assert err.value.code == "GIT_STORE_BUSY"
        assert source.held_revision() == tip
    finally:
        os.close(fd)
    assert source.poll().changed


def fsck(repo: Path) -> None:
    """C git's own check of the local repository: every object readable, every link whole."""
    subprocess.run(["git", "--git-dir", str(repo), "fsck", "--no-dangling", "--strict"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("transport", ["local", "http"])
def test_repeated_content_and_compaction_keep_a_valid_repository(
    tmp_path, server, transport, monkeypatch
):
    """The same blob in two files and the same folder twice are stored once; compaction
    rewrites the tip into one pack that C git's fsck accepts."""
    monkeypatch.setattr(store, "COMPACT_AFTER_PACKS", 2)
    upstream = Upstream(server.root / f"dev{next(_names)}.git")
    same = DEPLOYMENT.format(n=1)
    upstream.commit({"a/x.yaml": same, "a/y.yaml": same, "b/x.yaml": same, "b/y.yaml": same})
    url = server.url(upstream.path.name) if transport == "http" else str(upstream.path)
    source = GitSource(GitConfig(url=url), tmp_path / "state")
    for n in range(5):
        upstream.commit({f"c{n}/x.yaml": same, "z.yaml": f"n: {n}\n"})
        assert source.poll().changed
        fsck(tmp_path / "state" / "git" / "repo")
    assert len(list((tmp_path / "state").rglob("*.pack"))) <= 3
    files = source.snapshot(upstream.tip()).files
    assert files["b/y.yaml"] == files["c4/x.yaml"] == same.encode()
