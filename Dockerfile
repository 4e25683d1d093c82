# kaching: a ClickBank Instant Notification receiver.
#
#   docker build -t kaching .
#
# The image's default configuration uses the public demo key, which kaching
# refuses on a non-loopback address such as the 0.0.0.0 set below: mount your
# own configuration (with your [[accounts]]) at /etc/kaching/kaching.toml.
# Accounts cannot be given through environment variables.

# ---- build -------------------------------------------------------------------
# The crate needs Rust >= 1.85. SQLite is compiled in (sqlx bundles it) and TLS
# is rustls, so no system libraries are needed.
FROM rust:1-bookworm AS builder
WORKDIR /src

# Compile the dependencies once, against empty sources, so that a change in
# src/ does not rebuild them. The workspace also holds the load generator,
# bench/: cargo needs its manifest (and a stub target) to read the workspace
# and check Cargo.lock, but only the daemon (-p kaching) is built.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked -p kaching --bin kaching \
    && rm -rf src

COPY src ./src
COPY migrations ./migrations
# COPY keeps the files' old modification times: touch the crate roots so that
# cargo rebuilds kaching itself instead of reusing the empty one.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p kaching --bin kaching

# ---- run ---------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 kaching \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/kaching \
       --no-create-home --shell /usr/sbin/nologin kaching \
    && mkdir -p /var/lib/kaching \
    && chown kaching:kaching /var/lib/kaching

COPY --from=builder /src/target/release/kaching /usr/local/bin/kaching
COPY config/kaching.toml /etc/kaching/kaching.toml

# Relative paths in the configuration (sqlite://data/kaching.db, data/tls)
# resolve against the working directory: /var/lib/kaching/data/...
WORKDIR /var/lib/kaching
ENV KACHING_CONFIG=/etc/kaching/kaching.toml
# Listen on every interface inside the container. With the demo key still in
# the configuration, kaching refuses to start (see the top of this file).
ENV KACHING__SERVER__LISTEN=0.0.0.0:8443

EXPOSE 8443
VOLUME /var/lib/kaching

# The daemon checks itself: GET /readyz on its own listener (store reachable
# and taking commits). compose.yaml uses the same.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["kaching", "health", "--ready"]

USER kaching
ENTRYPOINT ["kaching"]
CMD ["serve"]
