SUMMARY = "Margo device management client for constrained edge gateways"
DESCRIPTION = "Applies the desired state a Margo WOS keeps in a Git repository per \
device through podman or docker, and reports deployment status back to the WOS."
HOMEPAGE = "https://specification.margo.org"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Where the integrator fetches margo-lite from: set both in local.conf or a bbappend,
# e.g. MARGO_LITE_GIT = "git://git.example.com/margo-lite.git;protocol=https;branch=main"
# (or use externalsrc on a local checkout).
MARGO_LITE_GIT ??= "git://git.example.com/margo-lite.git;protocol=https;branch=main"
SRC_URI = "${MARGO_LITE_GIT}"
SRCREV ??= "${AUTOREV}"
S = "${WORKDIR}/git"

# The project builds with setuptools through pyproject.toml (PEP 517) and has no
# setup.py, so the setuptools3 flavour for it is python_setuptools_build_meta.
inherit python_setuptools_build_meta systemd

SYSTEMD_SERVICE:${PN} = "margo-lite.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# podman (meta-virtualization) by default; docker-moby for docker.
MARGO_LITE_ENGINE ??= "podman"

# gpgv lives in gnupg's main package (gpg itself in gnupg-gpg).
RDEPENDS:${PN} += " \
    python3-core \
    python3-dulwich \
    python3-urllib3 \
    python3-pyyaml \
    gnupg \
    ${MARGO_LITE_ENGINE} \
"

do_install:append() {
    install -D -m 0644 ${S}/systemd/margo-lite.service ${D}${systemd_system_unitdir}/margo-lite.service
    install -D -m 0644 ${S}/packaging/config.example.yaml ${D}${sysconfdir}/margo-lite/config.yaml
    install -D -m 0644 ${S}/packaging/margo-lite.1 ${D}${mandir}/man1/margo-lite.1
}

FILES:${PN} += "${systemd_system_unitdir}/margo-lite.service"
CONFFILES:${PN} = "${sysconfdir}/margo-lite/config.yaml"
