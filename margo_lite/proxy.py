"""Which proxy, if any, a URL goes through: the site's proxy settings, parsed and matched.

Pure: reads no files and no environment of its own; `resolve` is given the `network`
section, the environment and the password. The rules follow curl and git, so a site's
existing `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` mean here what they mean there:

- lower-case variables win over upper-case ones; `https_proxy` serves https URLs and
  `http_proxy` plain http ones; `network.proxy` serves both and wins over the environment,
  as `network.no_proxy` (even an empty list) wins over `NO_PROXY`;
- a `no_proxy` entry is `*` (everything), an IP address, a CIDR range, or a host name that
  also matches its sub-domains (`example.com`, `.example.com` and `*.example.com` are the
  same rule); IP rules never match names (nothing is resolved to decide);
- loopback is not bypassed by itself: list `localhost` / `127.0.0.1` to do that.

The proxy itself is spoken to in plain HTTP (`http://[user@]host:port`); https URLs go
through it in a CONNECT tunnel with TLS verified end to end against the origin. A password
is never taken from a URL, only from `network.proxy_password_file`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping

from margo_lite.valueclass import dataclass, field

MASK = "***"
DEFAULT_PORT = 1080  # curl's, for an environment variable that names none
_CONTROL = re.compile(r"[\x00-\x20\x7f]|%[01][0-9a-f]|%7f", re.IGNORECASE)
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True)
class Proxy:
    """One forward proxy: where it is, who we are to it, and where the setting came from."""

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = "network.proxy"  # the configuration key or environment variable

    @property
    def url(self) -> str:
        """The proxy's URL without credentials (credentials travel in a header)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def shown(self) -> str:
        """The proxy as messages name it: the user visible, a password masked."""
        if self.user is None:
            return self.url
        secret = f":{MASK}" if self.password else ""
        return self.url.replace("http://", f"http://{urllib.parse.quote(self.user)}{secret}@", 1)

    def with_password(self, password: str | None) -> Proxy:
        return Proxy(self.host, self.port, self.user, password, self.source)


@dataclass(frozen=True)
class Rule:
    """One `no_proxy` entry: every host, a network, or a domain and its sub-domains."""

    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    domain: str | None = None  # None with no network: `*`, everything

    def matches(self, host: str) -> bool:
        if self.network is None and self.domain is None:
            return True
        address = _address(host)
        if self.network is not None:
            return address is not None and address in self.network
        return address is None and (host == self.domain or host.endswith("." + self.domain))


@dataclass(frozen=True)
class Settings:
    """The resolved proxy settings: a proxy per URL scheme, and the hosts that bypass it."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[Rule, ...] = ()

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy `url` goes through, or None for a direct connection."""
        parts = urllib.parse.urlsplit(url)
        proxy = self.https if parts.scheme.lower() == "https" else self.http
        if proxy is None:
            return None
        host = _norm_host(parts.hostname or "")
        if any(rule.matches(host) for rule in self.no_proxy):
            return None
        return proxy

    def describe(self) -> str:
        """One line for `check-config` and the start-up log."""
        if self.http is None and self.https is None:
            return "direct (no proxy)"
        seen = []
        for scheme, proxy in (("https", self.https), ("http", self.http)):
            if proxy is not None:
                seen.append(f"{scheme} via {proxy.shown} (from {proxy.source})")
        bypass = ", ".join(rule.text for rule in self.no_proxy) or "nothing"
        return "; ".join(seen) + f"; bypassed for: {bypass}"


DIRECT = Settings()


# --- parsers: raise ValueError with a message; callers add the key or variable ----------------


def parse_proxy_url(value: str, *, source: str = "network.proxy", lenient: bool = False) -> Proxy:
    """`http://[user@]host:port` -> Proxy. A password in the URL is refused: it would sit in a
    file or an environment anyone may read; it belongs in `network.proxy_password_file`.

    `lenient` (environment values) accepts a missing scheme or port, as curl does.
    """
    text = value.strip()
    if _CONTROL.search(text):
        raise ValueError("contains control characters or spaces")
    if lenient and "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid proxy URL (http://[user@]host:port)") from None
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"unsupported proxy scheme {parts.scheme + '://' if parts.scheme else '(none)'}: "
            "only http://[user@]host:port (https URLs still go through it, TLS end to end)"
        )
    if parts.password is not None:
        raise ValueError("must not contain a password: put it in network.proxy_password_file")
    if not parts.hostname:
        raise ValueError("names no host (http://[user@]host:port)")
    if port is None and not lenient:
        raise ValueError("names no port (http://[user@]host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only http://[user@]host:port (no path or query)")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return Proxy(_norm_host(parts.hostname), port or DEFAULT_PORT, user, None, source)


def parse_rule(value: str) -> Rule:
    """One `no_proxy` entry (see the module docstring)."""
    text = value.strip()
    if text == "*":
        return Rule(text)
    if "/" in text:
        try:
            return Rule(text, network=ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a valid CIDR range") from None
    host = _norm_host(text.removeprefix("*").removeprefix("."))
    address = _address(host)
    if address is not None:
        return Rule(text, network=ipaddress.ip_network(address))
    if not host or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise ValueError(
            f"{value!r} is not a host name, domain, IP address or CIDR range (no ports or paths)"
        )
    return Rule(text, domain=host)


# --- resolving configuration and environment ----------------------------------------------------


def resolve(
    proxy: Proxy | None,
    no_proxy: tuple[Rule, ...] | None,
    from_env: bool,
    environ: Mapping[str, str],
    password: str | None = None,
) -> Settings:
    """The settings in force: configuration first, then (if allowed) the environment.

    `password` (from `network.proxy_password_file`) goes to whichever proxy names a user.
    Raises ValueError naming the variable for a bad environment value.
    """
    http = https = proxy
    if proxy is None and from_env:
        https = _env_proxy(environ, "https_proxy")
        http = _env_proxy(environ, "http_proxy")
    if no_proxy is None:
        no_proxy = _env_rules(environ) if from_env else ()

    def keyed(p: Proxy | None) -> Proxy | None:
        return p.with_password(password) if p is not None and p.user is not None else p

    return Settings(http=keyed(http), https=keyed(https), no_proxy=tuple(no_proxy))


def _env(environ: Mapping[str, str], lower: str) -> tuple[str, str] | None:
    for name in (lower, lower.upper()):
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _env_proxy(environ: Mapping[str, str], lower: str) -> Proxy | None:
    found = _env(environ, lower)
    if found is None:
        return None
    name, value = found
    try:
        return parse_proxy_url(value, source=name, lenient=True)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}: {exc}") from None


def _env_rules(environ: Mapping[str, str]) -> tuple[Rule, ...]:
    found = _env(environ, "no_proxy")
    if found is None:
        return ()
    name, value = found
    rules = []
    for entry in value.split(","):
        if entry.strip():
            try:
                rules.append(parse_rule(entry))
            except ValueError as exc:
                raise ValueError(f"environment variable {name}: {exc}") from None
    return tuple(rules)


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
