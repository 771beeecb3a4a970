from __future__ import annotations

import pytest

from margo_lite import yamlload
from margo_lite.errors import InvalidYamlError

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)


def test_several_documents():
    assert yamlload.load_all("a: 1\n---\nb: [1, 2]\n") == [{"a": 1}, {"b": [1, 2]}]


def test_billion_laughs_fails_fast_with_code():
    with pytest.raises(InvalidYamlError) as err:
        yamlload.load_all(BILLION_LAUGHS)
    assert err.value.code == "YAML_TOO_COMPLEX"


def test_modest_aliases_still_work():
    docs = yamlload.load_all("x: &x {a: 1}\ny: *x\nz: [*x, *x]\n")
    assert docs == [{"x": {"a": 1}, "y": {"a": 1}, "z": [{"a": 1}, {"a": 1}]}]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[" * 5000, "YAML_TOO_COMPLEX"),
        ("a: 1\na: 2\n", "INVALID_YAML"),
        ("x: &x\n  y: *x\n", "INVALID_YAML"),
        ("!!python/object/apply:os.system ['true']", "INVALID_YAML"),
        ("? [1]\n: 2\n", "INVALID_YAML"),
        ("a: [1\n", "INVALID_YAML"),
        (b"\x00\x01\x02binary", "INVALID_YAML"),
        ("---\n" * 1001 + "a: 1", "YAML_TOO_COMPLEX"),
    ],
)
def test_hostile_yaml_is_refused_with_code(text, code):
    with pytest.raises(InvalidYamlError) as err:
        yamlload.load_all(text)
    assert err.value.code == code


def test_load_one_refuses_several_documents():
    with pytest.raises(InvalidYamlError):
        yamlload.load_one("a: 1\n---\nb: 2\n")
    assert yamlload.load_one("") is None
