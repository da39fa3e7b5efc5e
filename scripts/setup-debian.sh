#!/usr/bin/env bash
# Installs the Debian 12 packages that the build, the tests and the demo need.
#
# Runs apt-get only when one of the packages is missing, so it is cheap to
# call before every build. Needs root (or sudo) only in that case. The Rust
# toolchain is not installed here: cargo must already be on PATH (rustup).
set -euo pipefail

packages=(
    softhsm2        # SoftHSM2, the vendor module behind every test HSM
    p11-kit         # p11-kit server, which serves one token over a socket
    p11-kit-modules # p11-kit-client.so, the client side of that socket
    opensc          # pkcs11-tool
    gnutls-bin      # p11tool, GnuTLS's PKCS#11 command-line tool
    openssl         # RSA key generation in the demo; a client in tests/clients
    libengine-pkcs11-openssl # libp11's pkcs11 engine for OpenSSL (tests/clients)
    openjdk-17-jdk-headless  # java, javac and keytool with SunPKCS11 (tests/clients)
    libclang-dev    # libclang for bindgen in build.rs
    clang
    pkg-config
    valgrind
    python3
)

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null || true)
    if [[ $status != ii* ]]; then
        missing+=("$package")
    fi
done

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null; then
        echo "setup-debian.sh: apt-get not found; install these packages by hand: ${missing[*]}" >&2
        exit 1
    fi

    sudo=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null; then
            echo "setup-debian.sh: missing packages ${missing[*]}, and installing them needs root; run this script as root" >&2
            exit 1
        fi
        sudo=(sudo)
    fi

    echo "setup-debian.sh: installing ${missing[*]}"
    # OpenJDK's post-installation step links its manual pages into
    # /usr/share/man/man1 and fails where a minimal image has removed that
    # directory.
    if [[ ! -d /usr/share/man/man1 ]]; then
        "${sudo[@]}" mkdir -p /usr/share/man/man1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "setup-debian.sh: cargo not found on PATH; install a Rust toolchain with rustup (the crate needs Rust 1.82 or newer)" >&2
    exit 1
fi
