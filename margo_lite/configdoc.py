"""docs/configuration.md, rendered from the key declarations in `margo_lite.sections` and
`margo_lite.netsections`.

The declarations are the one source of each key's default and meaning; this renders them
with the rules that hold for every key and two example files. Never imported by the agent.
`python -m margo_lite.configdoc > docs/configuration.md` writes the page;
tests/test_docs_config.py fails when the page in the repository differs from `render()`.
"""

from __future__ import annotations

import inspect
import json

from margo_lite import options, valueclass
from margo_lite.config import SECTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HEADER = """\
# Configuration

<!-- Generated from margo_lite/sections.py and netsections.py by `python -m margo_lite.configdoc >
docs/configuration.md`; edit the declarations, not this page (tests/test_docs_config.py). -->

One YAML file: `-c FILE`, else `$MARGO_LITE_CONFIG`, else `/etc/margo-lite/config.yaml`.
`margo-lite check-config` checks it (and reads every file it names) and exits 0, or 2 with one
line naming the file and the key:

```
margo-lite: /etc/margo-lite/config.yaml: poll.interval: bad duration '5x' (use seconds, or a \
string like 30s, 5m, 1h) [CONFIG_INVALID]
```

- Unknown sections and keys are errors: a typo must not silently leave a default in force.
- Relative paths are relative to the configuration file's folder.
- Durations are seconds or strings like `30s`, `5m`, `1h30m`; sizes are bytes or strings like
  `64KiB`, `512MiB`, `2GiB`. Times of day are the device's local time.
- A section left out takes every default; `device`, `wos` and (with `desired.source: git`)
  `git` are required.

A device on the draft profile (the default), desired state from Git:

```yaml
device:
  id: gw-001
wos:
  url: https://wos.example.com
  token_url: https://wos.example.com/oauth/token
  client_id: gw-001
  client_secret_file: /etc/margo-lite/client-secret    # mode 0600
git:
  url: https://git.example.com/devices/gw-001.git
  token_file: /etc/margo-lite/git-token                # mode 0600
poll:
  interval: 5m
  hours: ["06:00-22:00"]
```

A device on Margo 1.0 (`wos.api: v1`), desired state from the WFM over mutual TLS (no `git`
section):

```yaml
device:
  id: gw-001
wos:
  api: v1
  url: https://wfm.example.com:3003/margo
  ca_file: /etc/margo-lite/trust-bundle.pem
  client_cert: /etc/margo-lite/svid.pem
  client_key: /etc/margo-lite/svid-key.pem             # mode 0600
```

Checks across keys: `runtime.compose` naming a driver of one engine needs that engine (or
`auto`); `runtime.settle` is shorter than `runtime.health_timeout`; `wos.client_key` needs
`wos.client_cert`. With `wos.api: v1`: `wos.url` is `https://`, `wos.client_cert` is set, and
the draft's OAuth2 and signing keys (`wos.token_url`, `client_id`, `client_secret_file`,
`signing_key`, `signing_cert`) are refused; `wos.server_id` is refused with `draft`, and so
is `desired.source: wos`.
"""


def render() -> str:
    """The whole page."""
    parts = [HEADER]
    for name, cls in SECTIONS.items():
        parts.append(f"\n## `{name}`\n\n{inspect.getdoc(cls)}\n\n")
        parts.append("| key | default | meaning |\n| --- | --- | --- |\n")
        for f in valueclass.fields(cls):
            default = shown_default(f)
            parts.append(f"| `{name}.{f.name}` | {default} | {f.metadata['doc']} |\n")
    return "".join(parts)


def shown_default(f: valueclass.Field) -> str:
    """The default as a reader writes it: `15m` rather than 900.0, `512MiB`, (required)."""
    meta = f.metadata
    if meta["shown"] is not None:
        return meta["shown"]
    if meta["required"]:
        return "(required)"
    value: Any = f.default
    if value is None:
        return "none"
    if meta["parser"] in (options.duration, options.positive_duration):
        return f"`{_seconds(value)}`"
    if meta["parser"] is options.size:
        return f"`{_bytes(value)}`"
    if isinstance(value, bool | tuple):
        return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _seconds(value: float) -> str:
    for unit, seconds in (("h", 3600), ("m", 60)):
        if value >= seconds and value % seconds == 0:
            return f"{value / seconds:g}{unit}"
    return f"{value:g}s"


def _bytes(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


if __name__ == "__main__":
    print(render(), end="")
