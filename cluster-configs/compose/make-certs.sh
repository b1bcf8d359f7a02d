#!/usr/bin/env bash
# Creates the cluster CA and the certificates of node1..node3 (SANs: their compose hostnames)
# with `quorumcast certs`, run from the node image, so no local binary is needed.
# Usage: make-certs.sh [DIR]   (default: ./certs next to this script; kept if it exists)
#
# DIR/ca/ca.pem and DIR/nodeN/node.pem are world-readable; DIR/ca/ca.key belongs to you
# (keep it to issue more nodes); DIR/nodeN/node.key (0600) belongs to uid 10001, the user the
# nodes run as, since each node reads its own key through a read-only bind mount.
# Environment: QUORUMCAST_IMAGE (default quorumcast:dev, built by scripts/docker-build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/certs}"
image="${QUORUMCAST_IMAGE:-quorumcast:dev}"
if [ -e "$dir/ca/ca.pem" ]; then
  echo "certificates already in $dir (delete the folder to make new ones)"
  exit 0
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
docker run --rm --user 0:0 --network none --entrypoint /bin/sh \
  -e HOST_UID="$(id -u)" -e HOST_GID="$(id -g)" -v "$dir:/certs" "$image" -c '
set -eu
quorumcast certs init --out /certs/ca
for i in 1 2 3; do
  quorumcast certs issue --ca /certs/ca --node-id "$i" --san "node$i" --out "/certs/node$i"
done
chown -R "$HOST_UID:$HOST_GID" /certs
chmod 0755 /certs/node1 /certs/node2 /certs/node3
chown 10001:10001 /certs/node1/node.key /certs/node2/node.key /certs/node3/node.key
'
echo "certificates for node1..node3 in $dir"
