#!/usr/bin/env bash
# Makes the cluster CA and one certificate per node with `quorumcast certs`, then the Secret
# the StatefulSet reads (quorumcast-certs: ca.pem, node1.pem, node1.key, node2.pem, ...).
#   make-secret.sh [--namespace NS] [--nodes N] [--dir DIR] [--bin PATH] [--print]
# DIR (default ./certs-<namespace>) keeps the CA key: keep it safe to issue certificates for
# more nodes later; the Secret holds only ca.pem and the node certificates and keys.
# --print shows the kubectl command instead of running it (no kubectl needed).
set -euo pipefail
namespace=default nodes=3 dir="" bin=quorumcast print=0
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift ;;
    --nodes) nodes="$2"; shift ;;
    --dir) dir="$2"; shift ;;
    --bin) bin="$2"; shift ;;
    --print) print=1 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "make-secret.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
dir="${dir:-certs-$namespace}"
domain="quorumcast-peers.$namespace.svc.cluster.local"

[ -e "$dir/ca/ca.pem" ] || "$bin" certs init --out "$dir/ca"
args=(create secret generic quorumcast-certs --namespace "$namespace"
  "--from-file=ca.pem=$dir/ca/ca.pem")
for i in $(seq 1 "$nodes"); do
  # Pod quorumcast-(i-1) is node i; peers verify it as node-i.quorumcast, the pod's DNS name
  # is there for tools.
  [ -e "$dir/node$i/node.pem" ] ||
    "$bin" certs issue --ca "$dir/ca" --node-id "$i" --san "quorumcast-$((i - 1)).$domain" --out "$dir/node$i"
  args+=("--from-file=node$i.pem=$dir/node$i/node.pem" "--from-file=node$i.key=$dir/node$i/node.key")
done
if [ "$print" = 1 ]; then
  printf '%q ' kubectl "${args[@]}"
  echo
else
  kubectl "${args[@]}"
fi
