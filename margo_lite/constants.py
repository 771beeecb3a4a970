"""Names margo-lite shares with the outside world, defined once.

The user agent every HTTP request and Git negotiation sends (WOS, Git, downloads,
onboarding), and the compose file names a package may ship (the order compose tools look
for them in) and the one name margo-lite writes the rendered document under.
"""

from __future__ import annotations

from margo_lite import __version__

USER_AGENT = f"margo-lite/{__version__}"

#: The names a compose tool looks for, in its order of preference.
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
#: The name margo-lite writes a rendered compose document under.
COMPOSE_FILE = COMPOSE_FILE_NAMES[0]

#: The folder of `state_dir` that caches packages (`packages.PackageStore`).
PACKAGE_CACHE = "packages"

#: The labels that mark what margo-lite runs (`backends.project`, `portcheck`).
MANAGED_BY = "io.margo.managed-by"
MANAGED_BY_VALUE = "margo-lite"
DEPLOYMENT = "io.margo.deployment"
COMPONENT = "io.margo.component"
