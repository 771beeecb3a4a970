SUMMARY = "Stand-in for meta-virtualization's podman, for tests only"
DESCRIPTION = "meta-virtualization is not among the layers the test has; this empty \
package lets bitbake resolve margo-lite's RDEPENDS on podman. It installs nothing."
HOMEPAGE = "https://github.com/containers/podman"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

INHIBIT_DEFAULT_DEPS = "1"
ALLOW_EMPTY:${PN} = "1"
