# syntax=docker/dockerfile:1
#
# swapstats image: one binary, role chosen by the subcommand
# (standalone | shard | router | produce | config).
#
#   docker build -t swapstats:dev .                 # runtime image (last stage)
#   docker build --target dev -t swapstats:dev-live .  # toolchain image for `tilt up -- --live`
#
# Dependencies are compiled in their own layer (cargo-chef, from crates.io), so
# a source change rebuilds only the swapstats crate. librdkafka is built from
# the source bundled in rdkafka-sys: gcc, g++, make and the zlib headers are all
# the build needs (no cmake, no OpenSSL with rdkafka's default features).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
# Line tables only: readable backtraces, a fraction of the full debug info.
ENV CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    CARGO_TERM_COLOR=never
WORKDIR /src

# The dependency recipe: Cargo.toml/Cargo.lock and the target layout, nothing else.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin swapstats
COPY . .
RUN cargo build --release --locked --bin swapstats \
 && install -m 0755 target/release/swapstats /usr/local/bin/swapstats

# Live-update image for Tilt (`tilt up -- --live`): keeps the toolchain, the
# sources and target/, so a synced source change is compiled inside the running
# container; a small supervisor restarts the binary whenever it is replaced.
# Runs as root (it writes target/ and /usr/local/bin): development only.
FROM builder AS dev
COPY scripts/dev-supervisor.sh /usr/local/bin/dev-supervisor
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "/usr/local/bin/dev-supervisor", "/usr/local/bin/swapstats"]
CMD ["standalone"]

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin swapstats
COPY --from=builder /usr/local/bin/swapstats /usr/local/bin/swapstats
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/swapstats"]
CMD ["standalone"]
