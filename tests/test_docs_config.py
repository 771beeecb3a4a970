"""docs/configuration.md is rendered from the key declarations, and its examples load."""

from __future__ import annotations

import re

import yaml

from margo_lite import config, configdoc
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "configuration.md"


def test_the_page_is_the_rendered_declarations():
    assert PAGE.read_text() == configdoc.render(), (
        "docs/configuration.md is stale: run "
        "`.venv-pypi/bin/python -m margo_lite.configdoc > docs/configuration.md`"
    )


def test_every_key_has_a_row_with_its_default():
    rows = {line.split(" | ")[0][3:-1]: line for line in PAGE.read_text().splitlines()
            if line.startswith("| `")}  # fmt: skip
    keys = [key for key, _default, _doc in config.documented_keys()]
    assert sorted(rows) == sorted(keys)
    assert "| `poll.max_backoff` | `15m` |" in rows["poll.max_backoff"]
    assert "| `packages.max_size` | `512MiB` |" in rows["packages.max_size"]
    assert "| `runtime.settle` | `1s` |" in rows["runtime.settle"]
    assert "| `wos.api` | `draft` |" in rows["wos.api"]


def test_the_example_files_on_the_page_load():
    examples = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    assert len(examples) == 2
    draft, v1 = (config.parse_config(yaml.safe_load(text), source="docs") for text in examples)
    assert (draft.wos.api, draft.desired.source, draft.poll.interval) == ("draft", "git", 300.0)
    assert (v1.wos.api, v1.desired.source, v1.git) == ("v1", "wos", None)
