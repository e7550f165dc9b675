# syntax=docker/dockerfile:1
#
# kube-scim: one static (musl) binary on distroless, running as the nonroot user 65532.
#
#   docker build -t kube-scim:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/kube-scim:0.1.0 --push .
#
# Each platform builds natively for its own architecture (under QEMU when emulated), so
# no cross toolchain is needed: the target is <uname -m>-unknown-linux-musl.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-tools: musl-gcc, for ring's C and assembly (rustls).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when Cargo.toml / Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target "$(uname -m)-unknown-linux-musl" \
 && rm -rf src

COPY src ./src
# touch: make cargo rebuild the crate over the dummy one from the layer above.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target "$(uname -m)-unknown-linux-musl" --bin kube-scim \
 && mkdir -p /out \
 && cp "target/$(uname -m)-unknown-linux-musl/release/kube-scim" /out/kube-scim \
 && strip /out/kube-scim \
 && /out/kube-scim --version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="kube-scim" \
      org.opencontainers.image.description="SCIM 2.0 provisioning endpoint and RBAC controller for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/kube-scim /kube-scim
USER 65532:65532
# 8080: SCIM (/scim/v2); 8081: /healthz, /readyz, /metrics.
EXPOSE 8080 8081
ENTRYPOINT ["/kube-scim"]
CMD ["run"]
