# quorumcast node image: `quorumcast node` as a non-root user, recordings and state on volumes.
#
# Build it with scripts/docker-build: it builds the release binary on the host, then runs
# `docker build` on a context holding only this file and the binary. With a registry the base
# is debian:bookworm-slim; without one (--offline, or when the pull fails) it is
# quorumcast-base:bookworm, made once with debootstrap and `docker import`. By hand:
#
#   cargo build --release --bin quorumcast
#   mkdir ctx && cp Dockerfile "$CARGO_TARGET_DIR/release/quorumcast" ctx/
#   docker build [--build-arg BASE=quorumcast-base:bookworm] -t quorumcast:dev ctx
#
# The binary links glibc dynamically: the base must have a glibc at least as new as the one of
# the machine that built it (Debian 12 bookworm: 2.36).
#
# Ports: 8080/tcp ingest (HTTP/1.1 and h2c), also the API, /healthz and Prometheus /metrics;
# 7000/udp cluster (QUIC, mutual TLS), the `listen` of `[cluster]` in the node's TOML.
# A recorder set needs a config file: QUORUMCAST_CONFIG=/etc/quorumcast/node.toml (mounted).
# The environment below overrides `dst`, `statedir` and `listen` of that file (flags > env >
# file); pass -e to change them.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

RUN groupadd --system --gid 10001 quorumcast \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/quorumcast \
      --no-create-home --shell /usr/sbin/nologin quorumcast \
 && mkdir -p /var/lib/quorumcast/recordings /var/lib/quorumcast/state /etc/quorumcast \
 && chown -R 10001:10001 /var/lib/quorumcast

COPY quorumcast /usr/local/bin/quorumcast

ENV TSRECORDER_DST=/var/lib/quorumcast/recordings \
    TS_STATE_DIR=/var/lib/quorumcast/state \
    QUORUMCAST_LISTEN=0.0.0.0:8080

USER 10001:10001
WORKDIR /var/lib/quorumcast
VOLUME ["/var/lib/quorumcast/recordings", "/var/lib/quorumcast/state"]
EXPOSE 8080/tcp 7000/udp

# 200 from /healthz: a standalone node that is up, or a set member whose leader is in touch
# with a quorum.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/quorumcast", "healthcheck"]

# SIGTERM (docker stop) syncs and marks every open session, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/quorumcast"]
CMD ["node"]
