# ollama-gateway container image.
#
# Plain Dockerfile syntax (no BuildKit-only features such as RUN --mount), so that the
# classic builder builds it too: Debian's docker.io and docker-compose 1.29 as well as
# Docker 23+ and the Compose plugin.
#
# Build stage: dependencies are compiled once, in a layer of their own that is reused until
# Cargo.toml or Cargo.lock change (a dummy main is built first, then the real sources), so
# a change to src/ recompiles only the gateway itself.
FROM rust:1-slim-bookworm AS builder
# make: the jemalloc allocator (tikv-jemalloc-sys) is built from C with configure + make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
# The allocator's build-time defaults (JEMALLOC_SYS_WITH_MALLOC_CONF).
COPY .cargo ./.cargo
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && for bench in translate gate; do echo 'fn main() {}' > "benches/$bench.rs"; done
RUN cargo build --release --locked --bin ollama-gateway
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin ollama-gateway \
    && install -m 0755 target/release/ollama-gateway /usr/local/bin/ollama-gateway

# Runtime stage: the binary and the default configuration, nothing else. Upstream TLS uses
# the root certificates compiled into the binary, so no CA package is needed.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/ollama-gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/ollama-gateway /var/lib/ollama-gateway/certs /var/lib/ollama-gateway/state \
    && chown -R gateway:gateway /var/lib/ollama-gateway
COPY --from=builder /usr/local/bin/ollama-gateway /usr/local/bin/ollama-gateway
COPY config/gateway.toml /etc/ollama-gateway/gateway.toml
USER gateway
WORKDIR /var/lib/ollama-gateway
# Inside the container: listen on all interfaces; keys, generated certificates and the
# token usage store (usage.redb; the directory belongs to the runtime user, so that a
# volume mounted there starts out writable by it) in their usual places. docker compose
# (or -e) can override any of these.
ENV GATEWAY_CONFIG=/etc/ollama-gateway/gateway.toml \
    GATEWAY_LISTEN=0.0.0.0:8443 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9464 \
    GATEWAY_KEYS_FILE=/etc/ollama-gateway/keys.toml \
    GATEWAY__TLS__SELF_SIGNED_DIR=/var/lib/ollama-gateway/certs \
    GATEWAY_STATE_DIR=/var/lib/ollama-gateway/state \
    GATEWAY_LOG_FORMAT=json
EXPOSE 8443
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["ollama-gateway", "health"]
ENTRYPOINT ["ollama-gateway"]
CMD ["serve"]
