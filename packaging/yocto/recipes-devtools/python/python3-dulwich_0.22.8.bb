SUMMARY = "Pure-Python Git implementation"
DESCRIPTION = "Dulwich reads and writes Git repositories and speaks the Git protocols \
               without the git command. margo-lite uses it to fetch a device's desired state."
HOMEPAGE = "https://www.dulwich.io/"
BUGTRACKER = "https://github.com/dulwich/dulwich/issues"
SECTION = "devel/python"
LICENSE = "Apache-2.0 | GPL-2.0-or-later"
LIC_FILES_CHKSUM = "file://COPYING;md5=d45757cfddbd32c1cd3132cf3b444d4f"
CVE_PRODUCT = "dulwich"

# The last release whose build needs no newer setuptools than scarthgap's (69): 0.23 and
# later need setuptools >= 77. margo-lite works with dulwich 0.21.2 and later.
SRC_URI[sha256sum] = "701547310415de300269331abe29cb5717aa1ea377af826bf513d0adfb1c209b"

inherit pypi python_setuptools_build_meta

# The Rust extensions are optional speed-ups; PURE makes setup.py leave them out, so the
# build needs no Rust toolchain and the package is the same on every machine.
export PURE = "1"

# The standard library packages of what dulwich's modules import (derived as margo-lite's
# are, see tests/support/pystdlib.py), less three that serve only paths margo-lite does
# not take: python3-ctypes (Windows), python3-debugger (`dulwich --pdb`) and python3-misc
# (wsgiref and nturl2path: the web server and Windows paths).
RDEPENDS:${PN} += "\
    python3-compression \
    python3-core \
    python3-crypt \
    python3-datetime \
    python3-difflib \
    python3-email \
    python3-io \
    python3-logging \
    python3-mmap \
    python3-netserver \
    python3-shell \
    python3-urllib3 \
"

BBCLASSEXTEND = "native nativesdk"
