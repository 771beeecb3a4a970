"""Errors of application packages: fetching them (HTTP downloads, OCI registries), their
signatures and keys, and the local policy that admits them.
"""

from __future__ import annotations

from .base import ProxyError, StalledError, TransientError

# --- application packages and local policy --------------------------------------------------


class PackageError(StalledError):
    """A package, its signature or its key is refused. The component is Failed until a new
    revision (or a new package at its location, with a configuration change) fixes it."""

    code = "PACKAGE_INVALID"
    codes = {
        "PACKAGE_INVALID": "fix the package (or its packageLocation) as the message says",
        "PACKAGE_TOO_LARGE": "make the package smaller, or raise `packages.max_size`",
        "UNSAFE_ARCHIVE": "rebuild the archive without links out, devices or absolute paths",
        "COMPOSE_FILE_MISSING": "put a compose file at the package's root",
        "KEY_INVALID": "fix the key at keyLocation or in `packages.trusted_keys`",
        "SIGNATURE_MISSING": "publish the signature beside the package (`.asc` or `.sig`)",
        "SIGNATURE_INVALID": "sign the package with a trusted key",
        "GPGV_MISSING": "install gpgv",
    }


class PolicyError(PackageError):
    """A compose file breaks the local policy; `rule` is the config key, `service` the service."""

    code = "POLICY_DENIED"
    codes = {"POLICY_DENIED": "change the compose file, or the `policy.*` key the message names"}

    def __init__(self, message: str, *, rule: str = "", service: str = "") -> None:
        super().__init__(message)
        self.rule = rule
        self.service = service


class PackageTransientError(TransientError):
    """The package could not be had now, or its ready folder must be built again."""

    code = "PACKAGE_DOWNLOAD_FAILED"
    codes = {
        "PACKAGE_DOWNLOAD_FAILED": "check the network and the package server; retried",
        "PACKAGE_CACHE_IO": "free disk space or fix the permissions of the package cache",
        "PACKAGE_MISSING": "none: the package is prepared again",
        "PACKAGE_TAMPERED": "none: a file in the ready folder changed (a container wrote into "
        "it); the package is prepared again from its source",
        **ProxyError.codes,
    }


class DownloadError(PackageTransientError):
    """A download failed after its retries; `status` is the HTTP status if one came back."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        challenge: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.challenge = challenge  # WWW-Authenticate of a 401, for registry token auth


class OciError(PackageError):
    """An OCI registry's answer or artifact that margo-lite will not use."""

    code = "OCI_MANIFEST_INVALID"
    codes = {
        "OCI_REFERENCE_INVALID": "fix the component's oci:// repository or its revision",
        "OCI_NOT_FOUND": "push the artifact, or fix the repository or revision",
        "OCI_DIGEST_MISMATCH": "the registry served bytes other than their digest says: "
        "check the registry and what sits between",
        "OCI_DIGEST_UNSUPPORTED": "publish the artifact with sha256 digests",
        "OCI_AUTH_FAILED": "fix the credentials in the oci:// location or the registry's "
        "access rules",
        "OCI_MANIFEST_INVALID": "publish a Compose OCI artifact, or one tar+gzip layer, with "
        "plain file names",
        "OCI_REFUSED": "check the registry: it refused the request (the message names the "
        "HTTP status)",
    }


class OciTransientError(PackageTransientError):
    """The registry or its token service cannot be reached or fails (5xx); retried later."""

    code = "OCI_UNREACHABLE"
    codes = {"OCI_UNREACHABLE": "check the network and the registry; retried"}
