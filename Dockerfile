# quorumcast node image.
#
# Status: written for users with a registry (`docker build -t quorumcast .`). The build
# that works on machines without a registry (a local debootstrap base made with
# `docker import`) comes with the chaos-tests issue, which also adds the healthcheck
# and cluster ports; this file has not been built on the project's CI machine yet.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin quorumcast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/quorumcast quorumcast \
 && mkdir -p /var/lib/quorumcast/recordings /var/lib/quorumcast/state \
 && chown -R quorumcast /var/lib/quorumcast
COPY --from=build /src/target/release/quorumcast /usr/local/bin/quorumcast
USER quorumcast
VOLUME ["/var/lib/quorumcast/recordings", "/var/lib/quorumcast/state"]
ENV TSRECORDER_DST=/var/lib/quorumcast/recordings TS_STATE_DIR=/var/lib/quorumcast/state
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/quorumcast", "node", "--listen", "0.0.0.0:8080"]
