"""Property tests: whatever the input, the parser answers with a model or coded failures."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from margo_lite import desired
from margo_lite.desired.files import looks_like_deployment
from margo_lite.errors import DESIRED_STATE_CODES, DesiredStateError
from tests.support.hypo import examples
from tests.test_desired_docs import doc, dump, env_param

SETTINGS = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["ENV.X", "services.web.image", "web", "docker-compose", "helm.v3", "a" * 300]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)


def check(state: desired.DesiredState) -> None:
    assert isinstance(state, desired.DesiredState)
    for failure in state.failures:
        assert isinstance(failure.error, DesiredStateError)
        assert failure.error.code in DESIRED_STATE_CODES
        assert str(failure.error).startswith(failure.source.split(" document ")[0])
    for d in state.deployments:
        assert desired.DEPLOYMENT_ID.fullmatch(d.id)
        assert d.components


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data):
    check(desired.parse_files({"a.yaml": data, "b.bin": data}))


@SETTINGS
@given(st.text(max_size=500))
def test_arbitrary_text(text):
    check(desired.parse_files({"a.yml": text.encode("utf-8", "surrogatepass")}))


@SETTINGS
@given(st.lists(values, max_size=3))
def test_arbitrary_yaml(documents):
    check(desired.parse_files({"x/a.yaml": yaml.safe_dump_all(documents).encode()}))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a document (keys and list indexes)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += paths(child, (*prefix, i))
    return found


BASE = doc(
    "dep-1",
    ("web", "db"),
    params={
        "a": env_param("v", "X", "web", "db"),
        "b": {"value": 1, "targets": [{"pointer": "services.web.image", "components": ["web"]}]},
    },
    depends_on="dep-0",
)
BASE_PATHS = paths(BASE)


@SETTINGS
@given(st.data())
def test_valid_documents_with_one_field_broken(data):
    document = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(BASE_PATHS))
        node: Any = document
        try:
            for key in path[:-1]:
                node = node[key]
            if data.draw(st.booleans()):
                node[path[-1]] = data.draw(values)
            else:
                del node[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced this part
    state = desired.parse_files({"a.yaml": dump(document, doc("ok"))})
    check(state)
    assert "ok" in [d.id for d in state.deployments]
    if document.get("kind") == desired.KIND or looks_like_deployment(document):
        assert len(state.deployments) + len(state.failures) == 2
