SUMMARY = "Margo device management client for constrained edge gateways"
DESCRIPTION = "Applies the desired state a Margo WOS keeps in a Git repository per \
               device through podman or docker, and reports deployment status back \
               to the WOS."
HOMEPAGE = "https://github.com/margo-lite/margo-lite"
BUGTRACKER = "https://github.com/margo-lite/margo-lite/issues"
SECTION = "admin"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"
CVE_PRODUCT = "margo-lite"

# The release, pinned: the commit of margo-lite ${PV}. To build a local checkout instead,
# set in local.conf (see packaging/yocto/README.md):
#   MARGO_LITE_SRC_URI = "file:///path/to/margo-lite-0.1.0.tar.gz"
# (a tarball of the checkout with a margo-lite-0.1.0/ prefix, as `git archive` makes), or
# use externalsrc: INHERIT += "externalsrc" and EXTERNALSRC:pn-margo-lite = "/path/to/checkout".
MARGO_LITE_SRC_URI ??= "git://github.com/margo-lite/margo-lite.git;protocol=https;branch=main;destsuffix=${BP}"
SRC_URI = "${MARGO_LITE_SRC_URI}"
SRCREV = "4b61fed7cf79938d7f43bf813201dfd56ba7c393"

# Built with setuptools through pyproject.toml (PEP 517); the unit is enabled at boot. The
# agent relies on systemd (Type=notify, watchdog, StateDirectory=): no SysV init script.
inherit python_setuptools_build_meta systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "margo-lite.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# podman (meta-virtualization) by default; docker-moby for docker.
MARGO_LITE_ENGINE ??= "podman"

FILES:${PN} += "${systemd_system_unitdir}/margo-lite.service"

# The standard library packages of every module margo-lite imports, derived from the code
# (tests/test_yocto.py fails when an import needs a package this list lacks, or when the
# list holds one no import needs), for scarthgap's and wrynose's python3 manifests.
# gnupg provides gpgv (commit and package signatures).
RDEPENDS:${PN} += "\
    ${MARGO_LITE_ENGINE} \
    gnupg \
    python3-compression \
    python3-core \
    python3-crypt \
    python3-datetime \
    python3-difflib \
    python3-dulwich \
    python3-fcntl \
    python3-io \
    python3-json \
    python3-logging \
    python3-math \
    python3-netclient \
    python3-pyyaml \
    python3-shell \
    python3-urllib3 \
"

do_install:append() {
    install -D -m 0644 ${S}/systemd/margo-lite.service ${D}${systemd_system_unitdir}/margo-lite.service
    install -D -m 0644 ${S}/packaging/config.example.yaml ${D}${sysconfdir}/margo-lite/config.example.yaml
    install -D -m 0644 ${S}/packaging/margo-lite.1 ${D}${mandir}/man1/margo-lite.1
}
