"""Packages: every location form gives the same ready folder; downloads are bounded and cached.

A real HTTPS server (test CA made by openssl) on 127.0.0.1 serves the packages and counts
what it sends.
"""

# Fixtures are imported from tests.support.pkgfixtures, so test arguments shadow them:
# ruff: noqa: F811

from __future__ import annotations

import os

import pytest

from margo_lite import archive, packages
from margo_lite.download import BACKOFF
from margo_lite.errors import DownloadError, PackageError, PackageTransientError
from margo_lite.valueclass import replace
from tests.support.pkgfixtures import (  # noqa: F401 (fixtures)
    cache_leftovers,
    make_store,
    make_tar,
    server,
    test_ca,
)
from tests.support.pkgserver import PackageServer, read_tree

COMPOSE = b"services:\n  web:\n    image: localhost/testimg:1\n    command: [httpd, -f]\n"
CONFIG = b"listen = 8080\n"
EMPTY: dict[str, bytes] = {}


def test_every_location_form_gives_the_same_ready_folder(server, make_store):
    store = make_store()
    tarball = make_tar([("compose.yaml", COMPOSE)])
    forms = [
        (server.put("/app.tar.gz", tarball), EMPTY),
        (server.put("/app/compose.yaml", COMPOSE), EMPTY),
        ("apps/web", {"apps/web/compose.yaml": COMPOSE, "other.yaml": b"x: 1\n"}),
        ("apps/web/compose.yaml", {"apps/web/compose.yaml": COMPOSE}),
        ("./apps/web.tgz", {"apps/web.tgz": tarball}),
        ("apps/plain.tar", {"apps/plain.tar": make_tar([("compose.yaml", COMPOSE)], gzip=False)}),
        ("x.tar.xz", {"x.tar.xz": make_tar([("compose.yaml", COMPOSE)], mode="w:xz")}),
        ("b.tar.bz2", {"b.tar.bz2": make_tar([("compose.yaml", COMPOSE)], mode="w:bz2")}),
    ]
    results = [store.prepare(location, None, files) for location, files in forms]
    assert {r.digest for r in results} == {results[0].digest}
    assert {r.path for r in results} == {results[0].path}
    first = results[0]
    assert first.compose_file == first.path / "compose.yaml"
    assert read_tree(first.path) == {"compose.yaml": COMPOSE}
    assert first.digest.startswith("sha256:") and first.path.name == first.digest[7:]


def test_multi_file_package_from_server_and_repository_is_the_same(server, make_store):
    store = make_store()
    files = [("docker-compose.yml", COMPOSE), ("conf/app.ini", CONFIG)]
    url = server.put("/multi.tar.gz", make_tar(files))
    repo = {"pkg/docker-compose.yml": COMPOSE, "pkg/conf/app.ini": CONFIG}
    from_url = store.prepare(url, None, EMPTY)
    from_folder = store.prepare("pkg", None, repo)
    from_repo_tar = store.prepare("pkg.tar.gz", None, {"pkg.tar.gz": make_tar(files)})
    assert from_url == from_folder == from_repo_tar
    assert read_tree(from_url.path) == {"conf/app.ini": CONFIG, "docker-compose.yml": COMPOSE}
    assert from_url.compose_file.name == "docker-compose.yml"


def test_unchanged_package_is_not_downloaded_again(server, make_store):
    url = server.put("/app.tar.gz", make_tar([("compose.yaml", COMPOSE)]))
    first = make_store().prepare(url, None, EMPTY)
    second = make_store().prepare(url, None, EMPTY)  # a new commit, even after a restart
    assert second == first
    assert server.downloads("/app.tar.gz") == 1
    assert server.answers["/app.tar.gz"] == [200, 304]
    assert "if-none-match" in server.headers_seen["/app.tar.gz"][1]


def test_last_modified_is_used_when_there_is_no_etag(server, make_store):
    server.etags, server.last_modified = False, True
    url = server.put("/app.tar.gz", make_tar([("compose.yaml", COMPOSE)]))
    store = make_store()
    store.prepare(url, None, EMPTY)
    store.prepare(url, None, EMPTY)
    assert server.answers["/app.tar.gz"] == [200, 304]


def test_package_republished_under_the_same_url_is_fetched(server, make_store):
    store = make_store()
    url = server.put("/app/compose.yaml", COMPOSE)
    old = store.prepare(url, None, EMPTY)
    server.put("/app/compose.yaml", COMPOSE + b"    restart: always\n")
    new = store.prepare(url, None, EMPTY)
    assert new.digest != old.digest
    assert server.downloads("/app/compose.yaml") == 2
    assert old.path.is_dir()  # still there until pruned


def test_server_without_validators_costs_a_download_but_not_a_new_folder(server, make_store):
    server.etags = False
    store = make_store()
    url = server.put("/app.tar.gz", make_tar([("compose.yaml", COMPOSE)]))
    assert store.prepare(url, None, EMPTY) == store.prepare(url, None, EMPTY)
    assert server.downloads("/app.tar.gz") == 2
    assert [p.name for p in (store._root / "pkgs").iterdir()] == [
        store.prepare(url, None, EMPTY).path.name
    ]


def test_transient_failures_are_retried_with_backoff(server, make_store):
    server.fail_first["/app/compose.yaml"] = [503, 502]
    store = make_store()
    prepared = store.prepare(server.put("/app/compose.yaml", COMPOSE), None, EMPTY)
    assert prepared.compose_file.read_bytes() == COMPOSE
    assert server.answers["/app/compose.yaml"] == [503, 502, 200]
    assert store.sleeps == [1.0, 2.0]


def test_a_body_cut_short_is_retried(server, make_store):
    server.cut_first["/app.tar.gz"] = 1
    store = make_store()
    tarball = make_tar([("compose.yaml", COMPOSE), ("pad", os.urandom(200_000))])
    prepared = store.prepare(server.put("/app.tar.gz", tarball), None, EMPTY)
    assert prepared.compose_file.read_bytes() == COMPOSE
    assert server.answers["/app.tar.gz"] == [-200, 200]
    assert list((store._root / "tmp").iterdir()) == []


def test_retries_are_bounded(server, make_store):
    server.fail_first["/app/compose.yaml"] = [503] * 10
    store = make_store(backoff=replace(BACKOFF, attempts=4))
    with pytest.raises(DownloadError) as caught:
        store.prepare(server.put("/app/compose.yaml", COMPOSE), None, EMPTY)
    assert caught.value.code == "PACKAGE_DOWNLOAD_FAILED"
    assert isinstance(caught.value, PackageTransientError)
    assert server.requests("/app/compose.yaml") == 4
    assert store.sleeps == [1.0, 2.0, 4.0]


def test_backoff_delays_grow_and_are_capped():
    backoff = replace(BACKOFF, attempts=5, cap=5.0)
    waits = []
    while not backoff.exhausted:
        backoff = backoff.failed()
        waits.append(backoff.delay())
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_missing_package_is_a_download_failure_without_retries(server, make_store):
    store = make_store()
    with pytest.raises(DownloadError) as caught:
        store.prepare(server.url("/nothing.tar.gz"), None, EMPTY)
    assert caught.value.status == 404
    assert "HTTP 404" in str(caught.value)
    assert server.requests("/nothing.tar.gz") == 1


def test_untrusted_server_certificate_is_refused(server, make_store, tmp_path):
    store = make_store(ca_file=None)  # the system store does not know the test CA
    with pytest.raises(DownloadError) as caught:
        store.prepare(server.put("/app/compose.yaml", COMPOSE), None, EMPTY)
    assert "TLS" in str(caught.value)
    assert server.downloads("/app/compose.yaml") == 0


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "streaming"])
def test_size_limit(server, make_store, tmp_path, content_length):
    if not content_length:
        server.no_length.add("/big.tar.gz")
    store = make_store(max_size=100_000)
    url = server.put("/big.tar.gz", os.urandom(1_000_000))
    with pytest.raises(PackageError) as caught:
        store.prepare(url, None, EMPTY)
    assert caught.value.code == "PACKAGE_TOO_LARGE"
    assert cache_leftovers(tmp_path / "cache") == []
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


def test_body_without_content_length_within_the_limit_is_fine(server, make_store):
    server.no_length.add("/app/compose.yaml")
    prepared = make_store().prepare(server.put("/app/compose.yaml", COMPOSE), None, EMPTY)
    assert prepared.compose_file.read_bytes() == COMPOSE


def test_silent_server_times_out(server, make_store):
    server.hold.add("/slow/compose.yaml")
    store = make_store(timeout=0.3, backoff=replace(BACKOFF, attempts=2))
    with pytest.raises(DownloadError) as caught:
        store.prepare(server.put("/slow/compose.yaml", COMPOSE), None, EMPTY)
    assert "timed out" in str(caught.value).lower()
    assert "tried 2 times" in str(caught.value)


def test_redirects_are_followed_but_never_to_plain_http(server, make_store):
    store = make_store()
    server.put("/real/compose.yaml", COMPOSE)
    server.redirects["/moved/compose.yaml"] = "/real/compose.yaml"
    assert store.prepare(server.url("/moved/compose.yaml"), None, EMPTY).compose_file.is_file()
    with PackageServer(None) as plain:
        plain.put("/compose.yaml", COMPOSE)
        server.redirects["/down/compose.yaml"] = plain.url("/compose.yaml")
        with pytest.raises(DownloadError, match="https to plain http"):
            store.prepare(server.url("/down/compose.yaml"), None, EMPTY)
        assert plain.requests("/compose.yaml") == 0


def test_credentials_in_a_url_never_reach_a_message_or_the_cache(server, make_store, tmp_path):
    url = server.url("/nothing.tar.gz").replace("https://", "https://bot:s3cr3t-t0ken@")
    with pytest.raises(DownloadError) as caught:
        make_store().prepare(url + "?token=s3cr3t-t0ken", None, EMPTY)
    assert "s3cr3t" not in str(caught.value)
    server.put("/app/compose.yaml", COMPOSE)
    url = server.url("/app/compose.yaml").replace("https://", "https://bot:s3cr3t-t0ken@")
    make_store().prepare(url + "?token=s3cr3t-t0ken", None, EMPTY)
    for path in (tmp_path / "cache").rglob("*"):
        assert not path.is_file() or b"s3cr3t" not in path.read_bytes(), path


def test_credentials_in_the_url_go_to_its_origin_only(server, make_store, test_ca):
    store = make_store()
    server.put("/app/compose.yaml", COMPOSE)
    url = server.url("/app/compose.yaml").replace("https://", "https://bot:pa%40ss@")
    store.prepare(url, None, EMPTY)
    assert server.headers_seen["/app/compose.yaml"][0]["authorization"] == "Basic Ym90OnBhQHNz"
    with PackageServer(test_ca) as other:
        other.put("/c.yaml", COMPOSE + b"#other\n")
        server.redirects["/moved.yaml"] = other.url("/c.yaml")
        moved = server.url("/moved.yaml").replace("https://", "https://bot:pa%40ss@")
        store.prepare(moved, None, EMPTY)
        assert "authorization" in server.headers_seen["/moved.yaml"][0]
        assert "authorization" not in other.headers_seen["/c.yaml"][0]


def test_missing_compose_file_names_the_nested_one(server, make_store):
    url = server.put("/nested.tar.gz", make_tar([("app/compose.yaml", COMPOSE)]))
    with pytest.raises(PackageError) as caught:
        make_store().prepare(url, None, EMPTY)
    assert caught.value.code == "COMPOSE_FILE_MISSING"
    assert "found app/compose.yaml" in caught.value.message
    folder = {"pkg/README": b"no compose here\n"}
    with pytest.raises(PackageError, match="COMPOSE_FILE_MISSING"):
        make_store().prepare("pkg", None, folder)


@pytest.mark.parametrize(
    "data", [b"\x00\x01binary junk", b"- just\n- a list\n", b"key: [unclosed\n"]
)
def test_a_bare_file_must_be_a_compose_mapping(server, make_store, data):
    url = server.put("/app/compose.yaml", data)
    with pytest.raises(PackageError) as caught:
        make_store().prepare(url, None, EMPTY)
    assert caught.value.code == "PACKAGE_INVALID"


def test_bare_compose_file_with_another_name_becomes_compose_yaml(server, make_store):
    prepared = make_store().prepare(server.put("/app/web-1.2.yaml", COMPOSE), None, EMPTY)
    assert prepared.compose_file.name == "compose.yaml"


@pytest.mark.parametrize("url", ["https://127.0.0.1:notaport/a.tgz", "https:///a.tgz"])
def test_malformed_urls_are_invalid(make_store, url):
    with pytest.raises(PackageError) as caught:
        make_store().prepare(url, None, EMPTY)
    assert caught.value.code == "PACKAGE_INVALID"


@pytest.mark.parametrize(
    "location", ["../outside", "/etc/compose.yaml", "a/../../b", ".", "file:///etc/passwd"]
)
def test_bad_repository_locations_are_refused(make_store, location):
    with pytest.raises(PackageError) as caught:
        make_store().prepare(location, None, {"a/compose.yaml": COMPOSE})
    assert caught.value.code == "PACKAGE_INVALID"


@pytest.mark.parametrize(
    "files",
    [{"p/compose.yaml": COMPOSE, "p/" + "n" * 300: b""}, {"p/a": b"", "p/a/b": b""}],
    ids=["name too long", "file and folder"],
)
def test_bad_repository_folders_are_invalid(make_store, files):
    with pytest.raises(PackageError) as caught:
        make_store().prepare("p", None, files)
    assert caught.value.code == "PACKAGE_INVALID"


def test_unknown_repository_location(make_store):
    with pytest.raises(PackageError, match="no such file or folder"):
        make_store().prepare("apps/missing", None, {"apps/web/compose.yaml": COMPOSE})


def test_in_repo_package_too_large(make_store):
    with pytest.raises(PackageError, match="PACKAGE_TOO_LARGE"):
        make_store(max_size=10).prepare("c.yaml", None, {"c.yaml": COMPOSE})
    with pytest.raises(PackageError, match="PACKAGE_TOO_LARGE"):
        make_store(max_size=10).prepare("p", None, {"p/compose.yaml": COMPOSE})


def test_prune_drops_packages_no_longer_wanted(server, make_store, tmp_path):
    store = make_store()
    keep = store.prepare(
        server.put("/a.tar.gz", make_tar([("compose.yaml", COMPOSE)])), None, EMPTY
    )
    drop = store.prepare(server.put("/b/compose.yml", COMPOSE + b"#b\n"), None, EMPTY)
    store.prune({keep.digest})
    assert keep.path.is_dir() and not drop.path.exists()
    blobs = [p.name for p in (tmp_path / "cache" / "blobs").iterdir()]
    assert len(blobs) == 1
    # the kept package still costs no download; the dropped one is fetched anew
    store.prepare(server.url("/a.tar.gz"), None, EMPTY)
    store.prepare(server.url("/b/compose.yml"), None, EMPTY)
    assert server.downloads("/a.tar.gz") == 1
    assert server.downloads("/b/compose.yml") == 2


def test_prune_with_nothing_to_drop_writes_nothing(server, make_store, tmp_path):
    """Every start prunes: with nothing to drop, the index is not written again (an idle
    `margo-lite once` writes 0 bytes to state_dir)."""
    store = make_store()
    keep = store.prepare(server.put("/a/compose.yaml", COMPOSE), None, EMPTY)
    store.prune({keep.digest})
    index = tmp_path / "cache" / "index.json"
    before = index.stat()
    files = sorted(p.name for p in index.parent.iterdir())
    make_store().prune({keep.digest})  # as the next process does
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in index.parent.iterdir()) == files
    store.prune(set())  # something to drop: written
    assert index.stat().st_mtime_ns != before.st_mtime_ns


def test_prune_holds_the_cache_to_its_size_by_dropping_old_downloads(server, make_store):
    store = make_store(cache_size=1)  # less than anything: only packages in use stay
    a = store.prepare(server.put("/a/compose.yaml", COMPOSE), None, EMPTY)
    b = store.prepare(server.put("/b/compose.yaml", COMPOSE + b"#b\n"), None, EMPTY)
    store.prune({a.digest, b.digest})
    assert a.path.is_dir() and b.path.is_dir()  # in use: never evicted
    assert list((store._root / "blobs").iterdir()) == []
    assert store.prepare(server.url("/a/compose.yaml"), None, EMPTY) == a
    assert server.downloads("/a/compose.yaml") == 2


def test_crash_leftovers_are_cleared_and_a_broken_index_only_costs_downloads(
    server, make_store, tmp_path
):
    store = make_store()
    url = server.put("/app.tar.gz", make_tar([("compose.yaml", COMPOSE)]))
    prepared = store.prepare(url, None, EMPTY)
    cache = tmp_path / "cache"
    (cache / "tmp" / "prepare-dead" / "package").mkdir(parents=True)
    for name in ("index.json", "index.json.prev"):
        (cache / name).write_bytes(b"torn")
    again = make_store().prepare(url, None, EMPTY)
    assert again == prepared
    assert list((cache / "tmp").iterdir()) == []
    assert server.downloads("/app.tar.gz") == 2


def test_a_damaged_cached_download_is_fetched_again(server, make_store, tmp_path):
    store = make_store()
    url = server.put("/app.tar.gz", make_tar([("compose.yaml", COMPOSE)]))
    prepared = store.prepare(url, None, EMPTY)
    (blob,) = (tmp_path / "cache" / "blobs").iterdir()
    blob.write_bytes(b"rot")
    assert store.prepare(url, None, EMPTY) == prepared
    assert server.downloads("/app.tar.gz") == 2


def test_cache_folder_that_cannot_be_made_is_a_coded_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PackageTransientError) as caught:
        packages.PackageStore(packages.PackagesConfig(), tmp_path / "file" / "cache")
    assert caught.value.code == "PACKAGE_CACHE_IO"


def test_tree_digest_sees_content_mode_and_links(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "f").write_bytes(b"x")
        os.chmod(root / "f", 0o644)
    assert archive.tree_digest(a) == archive.tree_digest(b)
    os.chmod(b / "f", 0o755)
    assert archive.tree_digest(a) != archive.tree_digest(b)
    os.chmod(b / "f", 0o644)
    os.symlink("f", b / "l")
    assert archive.tree_digest(a) != archive.tree_digest(b)
