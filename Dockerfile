# syntax=docker/dockerfile:1
#
# The oauth-token-operator image: a statically linked binary on distroless/static, running as
# the unprivileged user 65532, for linux/amd64 and linux/arm64. Build with:
#
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t oauth-token-operator:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg REVISION=$(git rev-parse HEAD) \
#     -t REGISTRY/oauth-token-operator:0.1.0 --push .
#
# The build stage runs on the build machine's platform (BUILDPLATFORM) and cross-compiles for
# TARGETARCH (set by BuildKit per platform): no emulation, the same Rust toolchain for both
# architectures. scripts/build-release.sh is the one definition of the release build. No Docker
# engine runs in CI: .ci/image-check replays this file's build stage (its ARG, COPY and RUN steps)
# in a staging directory instead, then checks the binary and the runtime stage.

# --- build ------------------------------------------------------------------------------------
# rustc 1.95.0 on Debian bookworm (glibc 2.36; see scripts/build-release.sh on static glibc).
FROM --platform=$BUILDPLATFORM rust:1.95.0-slim-bookworm AS build
# amd64 or arm64: the architecture of the image being built (BuildKit sets it; empty, as with the
# legacy builder, means the build machine's).
ARG TARGETARCH
WORKDIR /src

# make, for jemalloc's build (the operator's allocator). Cross-compiling (TARGETARCH other than
# the build machine's): Debian's cross C compiler and the target's glibc (static libc.a
# included), for ring's and jemalloc's C code and the final link. The package lists are left in
# place: this stage is not shipped, and .ci/image-check replays this step on the CI machine
# itself.
RUN case "${TARGETARCH}" in amd64) cpu=x86_64 ;; arm64) cpu=aarch64 ;; "") cpu=$(uname -m) ;; *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; esac \
 && packages="" \
 && if ! command -v make >/dev/null; then packages="make"; fi \
 && if [ "${cpu}" != "$(uname -m)" ] && ! command -v "${cpu}-linux-gnu-gcc" >/dev/null; then \
      packages="${packages} gcc-$(echo "${cpu}" | tr _ -)-linux-gnu libc6-dev-${TARGETARCH}-cross"; \
    fi \
 && if [ -n "${packages}" ]; then \
      apt-get update && apt-get install -y --no-install-recommends ${packages}; \
    fi

# Dependencies first, for layer caching: this layer is rebuilt only when a manifest, the lock
# file or the build script changes. Every workspace member's manifest must be copied here
# (.ci/image-check checks that), with dummy sources for its targets; the dummy benchmark stays,
# since cargo reads every target of the manifest even when it builds only the binary.
COPY Cargo.toml Cargo.lock ./
COPY testing/kube-test-apiserver/Cargo.toml testing/kube-test-apiserver/
COPY scripts/build-release.sh scripts/
RUN mkdir -p src benches testing/kube-test-apiserver/src \
 && echo 'fn main() {}' >benches/scale.rs \
 && echo 'fn main() {}' >src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' >testing/kube-test-apiserver/src/main.rs \
 && touch testing/kube-test-apiserver/src/lib.rs \
 && scripts/build-release.sh "${TARGETARCH}" \
 && rm -rf src

# The commit built from (`--build-arg REVISION=$(git rev-parse HEAD)`): the image label and the
# `revision` label of the oauth_token_operator_build_info metric. Declared only here, so that a
# new revision does not invalidate the dependency layer above.
ARG REVISION=unknown

# The real sources. COPY keeps the files' modification times, which can be older than the
# dummy build's outputs: touch the crate roots so cargo rebuilds the operator itself. The binary
# goes to one path whatever the architecture; it runs here (--version) when not cross-compiled.
# plugin/ holds the kubectl plugin: kubectl-oauthtoken, a link to the same binary (invoked under
# that name it is `kubectl oauthtoken`), copied into the image as a link.
COPY src src
RUN touch src/main.rs src/lib.rs \
 && export GIT_REVISION="${REVISION}" \
 && binary=$(scripts/build-release.sh "${TARGETARCH}" | tail -n 1) \
 && cp "${binary}" oauth-token-operator \
 && mkdir -p plugin \
 && ln -sfn oauth-token-operator plugin/kubectl-oauthtoken \
 && case "${TARGETARCH:-native}-$(uname -m)" in \
      native-* | amd64-x86_64 | arm64-aarch64) ./oauth-token-operator --version ;; \
    esac

# --- runtime ----------------------------------------------------------------------------------
# No shell, no package manager; CA certificates and /etc/passwd (user nonroot, 65532) only. A
# multi-arch image: BuildKit picks the variant for the target platform.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="oauth-token-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps OAuth 2.0 access tokens fresh in Secrets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=build /src/oauth-token-operator /oauth-token-operator
# /kubectl-oauthtoken -> oauth-token-operator (a directory copy keeps the link a link). To install
# the plugin from the image, copy the binary under the plugin's name, see README, The kubectl
# plugin.
COPY --from=build /src/plugin/ /
USER 65532:65532
# Health, readiness and metrics (--http-addr, default 0.0.0.0:8080).
EXPOSE 8080
ENTRYPOINT ["/oauth-token-operator"]
CMD ["run"]
