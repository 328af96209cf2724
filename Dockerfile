# syntax=docker/dockerfile:1
# The projectvm operator on a distroless base: the binary links glibc only (TLS is rustls
# with aws-lc-rs/ring compiled in, no OpenSSL), so gcr.io/distroless/cc is all it needs.
#
#   docker build -t projectvm-operator .
#   docker build --build-arg RUST_VERSION=1.95 -t projectvm-operator .   # pin the toolchain

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# cmake: the fallback build of aws-lc-sys.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: the manifests of the whole workspace (Cargo
# resolves it even when building one package) and stub sources, so this layer is rebuilt
# only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY testbed/Cargo.toml testbed/Cargo.toml
RUN mkdir -p src/bin testbed/src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/crdgen.rs \
    && touch src/lib.rs testbed/src/lib.rs \
    && echo 'fn main() {}' > testbed/src/bin/gce-emulator.rs \
    && cargo build --release --locked --bin projectvm-operator \
    && rm -rf src target/release/projectvm-operator* target/release/deps/projectvm-* \
        target/release/deps/libprojectvm-* target/release/.fingerprint/projectvm-*

# The operator itself.
COPY src src
RUN cargo build --release --locked --bin projectvm-operator \
    && strip target/release/projectvm-operator \
    && ./target/release/projectvm-operator --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/projectvm-operator /projectvm-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/projectvm-operator"]
