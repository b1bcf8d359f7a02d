#!/usr/bin/env bash
# Creates the cluster CA and one certificate per node under certs/ (keys are 0600).
# Usage: cluster-configs/local-3node/make-certs.sh [path/to/quorumcast]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-quorumcast}"
if [ -e "$here/certs/ca/ca.pem" ]; then
  echo "certs already exist in $here/certs (delete the folder to make new ones)"
  exit 0
fi
"$bin" certs init --out "$here/certs/ca"
for i in 1 2 3; do
  "$bin" certs issue --ca "$here/certs/ca" --node-id "$i" --san 127.0.0.1 --san localhost --out "$here/certs/node$i"
done
