#!/usr/bin/env bash
# The one definition of the release build of the operator binary. The Dockerfile runs it (twice:
# once on dummy sources to cache the dependencies, once on the real sources) and CI runs it
# through .ci/image-check, so the image build cannot break silently.
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
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
export RUSTFLAGS="-C target-feature=+crt-static${RUSTFLAGS:+ ${RUSTFLAGS}}"

cargo build --release --locked --target "${target}" --bin oauth-token-operator >&2

echo "${CARGO_TARGET_DIR:-target}/${target}/release/oauth-token-operator"
