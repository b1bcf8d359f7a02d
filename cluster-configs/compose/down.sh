#!/usr/bin/env bash
# Stops and removes the compose recorder set's containers and network.
#   ./down.sh              keeps the volumes (recordings, node state, Prometheus data)
#   ./down.sh --volumes    deletes them too; certificates in ./certs are kept either way
set -euo pipefail
cd "$(dirname "$0")"
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  compose=(docker compose)
fi
args=(down --remove-orphans --timeout 15)
if [ "${1:-}" = --volumes ] || [ "${1:-}" = -v ]; then
  args+=(--volumes)
fi
"${compose[@]}" "${args[@]}"
