#!/usr/bin/env bash
# The one definition of the release build of the operator binary. The Dockerfile runs it (twice:
# once on dummy sources to cache the dependencies, once on the real sources) and CI runs it
# through .ci/image-check, so the image build cannot break silently.
#
# Usage: scripts/build-release.sh [ARCH]
#   ARCH: amd64 or arm64 (Docker's TARGETARCH names), or a Rust target triple. Default: the
#   TARGETARCH environment variable (BuildKit sets it as a build argument), else this machine's
#   architecture.
#
# Prints the path of the built binary as its last line of standard output (cargo's own output
# goes to standard error).
#
# A static binary: no musl target is available on our machines, so this links glibc statically
# (`+crt-static` on the gnu target). `--target` is given explicitly so that RUSTFLAGS apply to the
# operator only, not to build scripts and proc macros (which must stay dynamic). Statically
# linked glibc still resolves host names: since glibc 2.34 the `files` and `dns` NSS modules are
# built into libc, so getaddrinfo works without dlopen as long as /etc/nsswitch.conf names only
# those (the linker still warns about getaddrinfo; that warning is expected). The build image is
# Debian bookworm, glibc 2.36.
#
# Cross-compiling (target architecture other than this machine's): the Rust standard library for
# the target is added with rustup, and the C compiler and linker are Debian's cross toolchain,
# `<arch>-linux-gnu-gcc` with the target's static glibc (packages gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross for arm64, gcc-x86-64-linux-gnu and libc6-dev-amd64-cross for amd64;
# the Dockerfile installs them). CARGO_TARGET_<TRIPLE>_LINKER and CC_<triple> are set to it
# unless already set.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-${TARGETARCH:-$(uname -m)}}
case ${arch} in
  amd64 | x86_64 | x86_64-unknown-linux-gnu) target=x86_64-unknown-linux-gnu debian_arch=amd64 ;;
  arm64 | aarch64 | aarch64-unknown-linux-gnu) target=aarch64-unknown-linux-gnu debian_arch=arm64 ;;
  *)
    echo "build-release.sh: unsupported architecture ${arch} (amd64 or arm64)" >&2
    exit 2
    ;;
esac
target_cpu=${target%%-*}

if [[ ${target_cpu} != "$(uname -m)" ]]; then
  gcc=${target_cpu}-linux-gnu-gcc
  if ! command -v "${gcc}" >/dev/null; then
    echo "build-release.sh: cross-compiling for ${target} needs ${gcc} (Debian: gcc-${target_cpu//_/-}-linux-gnu and libc6-dev-${debian_arch}-cross)" >&2
    exit 2
  fi
  upper=$(tr 'a-z-' 'A-Z_' <<<"${target}")
  linker_var=CARGO_TARGET_${upper}_LINKER
  export "${linker_var}=${!linker_var:-${gcc}}"
  cc_var=CC_${target//-/_}
  export "${cc_var}=${!cc_var:-${gcc}}"
  if ! rustup target list --installed | grep -qx "${target}"; then
    rustup target add "${target}" >&2
  fi
fi

export RUSTFLAGS="-C target-feature=+crt-static${RUSTFLAGS:+ ${RUSTFLAGS}}"

cargo build --release --locked --target "${target}" --bin oauth-token-operator >&2

echo "${CARGO_TARGET_DIR:-target}/${target}/release/oauth-token-operator"
