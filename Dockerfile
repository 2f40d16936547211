# syntax=docker/dockerfile:1
#
# The oauth-token-operator image: a statically linked binary on distroless/static, running as
# the unprivileged user 65532. Build with:
#
#   docker build -t oauth-token-operator:0.1.0 .
#
# scripts/build-release.sh is the one definition of the release build. No Docker engine runs in
# CI: .ci/image-check replays this file's build stage (its COPY and RUN steps) in a staging
# directory instead, then checks the binary and the runtime stage.

# --- build ------------------------------------------------------------------------------------
# rustc 1.95.0 on Debian bookworm (glibc 2.36; see scripts/build-release.sh on static glibc).
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src

# Dependencies first, for layer caching: this layer is rebuilt only when a manifest, the lock
# file or the build script changes. Every workspace member's manifest must be copied here
# (.ci/image-check checks that), with dummy sources for its targets.
COPY Cargo.toml Cargo.lock ./
COPY testing/kube-test-apiserver/Cargo.toml testing/kube-test-apiserver/
COPY scripts/build-release.sh scripts/
RUN mkdir -p src testing/kube-test-apiserver/src \
 && echo 'fn main() {}' >src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' >testing/kube-test-apiserver/src/main.rs \
 && touch testing/kube-test-apiserver/src/lib.rs \
 && scripts/build-release.sh \
 && rm -rf src

# The real sources. COPY keeps the files' modification times, which can be older than the
# dummy build's outputs: touch the crate roots so cargo rebuilds the operator itself.
COPY src src
RUN touch src/main.rs src/lib.rs \
 && scripts/build-release.sh \
 && target/x86_64-unknown-linux-gnu/release/oauth-token-operator --version

# --- runtime ----------------------------------------------------------------------------------
# No shell, no package manager; CA certificates and /etc/passwd (user nonroot, 65532) only.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="oauth-token-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps OAuth 2.0 access tokens fresh in Secrets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/oauth-token-operator /oauth-token-operator
USER 65532:65532
# Health, readiness and metrics (--http-addr, default 0.0.0.0:8080).
EXPOSE 8080
ENTRYPOINT ["/oauth-token-operator"]
CMD ["run"]
