# Builds the operator as a static binary and ships it alone on a distroless base.
FROM rust:1.91-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY testbed/Cargo.toml testbed/Cargo.toml
# Cache dependencies: build once with stub sources.
RUN mkdir -p src/bin testbed/src && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > src/bin/crdgen.rs \
    && touch src/lib.rs testbed/src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl --bin projectvm-operator || true
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --target x86_64-unknown-linux-musl --bin projectvm-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/projectvm-operator /projectvm-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/projectvm-operator"]
