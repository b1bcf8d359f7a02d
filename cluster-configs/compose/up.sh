#!/usr/bin/env bash
# Starts the compose recorder set (node1..node3 + Prometheus) and waits until the three nodes
# are healthy (Docker healthcheck: /healthz 200, i.e. a leader in touch with a quorum).
#   ./up.sh            uses the image $QUORUMCAST_IMAGE (default quorumcast:dev)
#   ./up.sh --build    first builds it with scripts/docker-build (release binary)
# Makes the certificates on first use (./make-certs.sh), builds the Prometheus image (from the
# layer cache after the first time), then prints where everything listens.
# Environment: see docker-compose.yml, and QC_UP_TIMEOUT (seconds to wait, default 120).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export QUORUMCAST_IMAGE="${QUORUMCAST_IMAGE:-quorumcast:dev}"
export QUORUMCAST_CERTS="${QUORUMCAST_CERTS:-$here/certs}"
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  compose=(docker compose)
fi

if [ "${1:-}" = --build ]; then
  "$here/../../scripts/docker-build" --tag "$QUORUMCAST_IMAGE"
fi
if ! docker image inspect "$QUORUMCAST_IMAGE" >/dev/null 2>&1; then
  echo "up.sh: no image $QUORUMCAST_IMAGE: build it with scripts/docker-build (or ./up.sh --build)" >&2
  exit 1
fi
# The Prometheus image builds on the local base when there is one, else on Debian's.
if [ -z "${QUORUMCAST_BASE:-}" ]; then
  if docker image inspect quorumcast-base:bookworm >/dev/null 2>&1; then
    export QUORUMCAST_BASE=quorumcast-base:bookworm
  else
    export QUORUMCAST_BASE=debian:bookworm-slim
  fi
fi

"$here/make-certs.sh" "$QUORUMCAST_CERTS"
# Built every time: a few seconds from the layer cache once it exists.
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" "${compose[@]}" build -q prometheus
"${compose[@]}" up -d

deadline=$((SECONDS + ${QC_UP_TIMEOUT:-120}))
for node in node1 node2 node3; do
  id="$("${compose[@]}" ps -q "$node")"
  until [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")" = healthy ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "up.sh: $node is not healthy after ${QC_UP_TIMEOUT:-120}s; its log:" >&2
      "${compose[@]}" logs --tail 30 "$node" >&2
      exit 1
    fi
    sleep 1
  done
done

echo "recorder set up (project ${COMPOSE_PROJECT_NAME:-quorumcast}):"
for node in node1 node2 node3; do
  echo "  $node ingest, API and /metrics: http://$("${compose[@]}" port "$node" 8080)"
done
echo "  prometheus: http://$("${compose[@]}" port prometheus 9090)"
echo "try: quorumcast cluster status --node $("${compose[@]}" port node1 8080)"
