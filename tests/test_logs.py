from __future__ import annotations

import io
import logging

import pytest

from margo_lite import logs


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        (
            "https://user:pw@git.example.com:8443/a/b.git?token=x#f",
            "https://git.example.com:8443/a/b.git",
        ),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("file:///srv/repo.git", "file:///srv/repo.git"),
        ("/srv/repo.git", "/srv/repo.git"),
    ],
)
def test_sanitize_url(url, safe):
    assert logs.sanitize_url(url) == safe


def test_registered_secret_never_reaches_the_log():
    stream = io.StringIO()
    logger = logs.setup("DEBUG", stream=stream)
    logs.register_secret("tok-0123456789")
    child = logs.get("margo_lite.test")
    child.info("token is %s", "tok-0123456789")
    try:
        raise RuntimeError("failed with tok-0123456789")
    except RuntimeError:
        child.exception("boom")
    output = stream.getvalue()
    assert "tok-0123456789" not in output
    assert output.count(logs.MASK) >= 2
    logger.handlers.clear()


def test_short_values_are_not_registered():
    logs.register_secret("ab")
    assert logs.redact("about") == "about"


def test_get_puts_modules_under_margo_lite():
    assert logs.get("x").name == "margo_lite.x"
    assert logs.get("margo_lite.cli") is logging.getLogger("margo_lite.cli")
