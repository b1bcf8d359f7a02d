#!/usr/bin/env bash
# Checks these manifests without a Kubernetes cluster (this is not `kubectl apply`):
#   ./check.sh            YAML parses, and the objects agree with each other (names, labels,
#                         ports, volumes, the headless Service the StatefulSet names)
#   ./check.sh --docker   also runs three "pods" as plain containers (image $QUORUMCAST_IMAGE,
#                         default quorumcast:dev): the ConfigMap's init.sh per pod, hostnames
#                         and pod DNS names as in the StatefulSet, certificates from
#                         make-secret.sh laid out as the Secret volume, a read-only root file
#                         system, then waits until all three are healthy with one leader.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 - "$here" <<'PY'
import glob, os, sys
import yaml

here = sys.argv[1]
objs = {}
for path in sorted(glob.glob(os.path.join(here, "*.yaml"))):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = doc
print("parsed:", ", ".join(f"{k}/{n}" for k, n in objs))

def need(cond, what):
    if not cond:
        sys.exit(f"check.sh: {what}")

sts = objs[("StatefulSet", "quorumcast")]
spec = sts["spec"]
pod = spec["template"]["spec"]
labels = spec["template"]["metadata"]["labels"]
need(spec["selector"]["matchLabels"].items() <= labels.items(), "StatefulSet selector vs pod labels")
need(spec["replicas"] == 3, "3 replicas")
need(spec["podManagementPolicy"] == "Parallel", "Parallel pod management")
headless = objs[("Service", spec["serviceName"])]
need(headless["spec"].get("clusterIP") == "None", "serviceName is headless")
need(headless["spec"].get("publishNotReadyAddresses") is True, "peers published before ready")
main = pod["containers"][0]
port_names = {p["name"] for p in main["ports"]}
for svc in (o for (k, _), o in objs.items() if k == "Service"):
    need(svc["spec"]["selector"].items() <= labels.items(), f"{svc['metadata']['name']} selector")
    for p in svc["spec"]["ports"]:
        need(p["targetPort"] in port_names, f"{svc['metadata']['name']} targets a named port")
pdb = objs[("PodDisruptionBudget", "quorumcast")]
need(pdb["spec"]["maxUnavailable"] == 1, "PDB maxUnavailable 1")
need(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selector")
volumes = {v["name"]: v for v in pod["volumes"]}
claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
need(claims == {"recordings", "state"}, "claims for recordings and state")
for c in pod["initContainers"] + pod["containers"]:
    for m in c["volumeMounts"]:
        need(m["name"] in volumes or m["name"] in claims, f"{c['name']} mounts unknown {m['name']}")
need(("ConfigMap", volumes["init-script"]["configMap"]["name"]) in objs, "init ConfigMap exists")
need(volumes["certs"]["secret"]["secretName"] == "quorumcast-certs", "certificate Secret")
need(main["readinessProbe"]["httpGet"]["path"] == "/healthz", "readiness on /healthz")
need(main["readinessProbe"]["httpGet"]["port"] in port_names, "probe port")
print("consistent: StatefulSet, Services, PodDisruptionBudget, ConfigMap")
with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "quorumcast-init.sh"), "w") as f:
    f.write(objs[("ConfigMap", "quorumcast-init")]["data"]["init.sh"])
PY

[ "${1:-}" = --docker ] || exit 0
image="${QUORUMCAST_IMAGE:-quorumcast:dev}"
sim="$(mktemp -d /tmp/quorumcast-k8s-check.XXXXXX)"
tag="qck8s$$"
cleanup() {
  for n in 0 1 2; do
    docker rm -f "$tag-$n" >/dev/null 2>&1 || true
    docker volume rm "$tag-recordings-$n" "$tag-state-$n" >/dev/null 2>&1 || true
  done
  docker network rm "$tag" >/dev/null 2>&1 || true
  rm -rf "$sim"
}
trap cleanup EXIT
mkdir -p "$sim/scripts" "$sim/secret"
mv "${TMPDIR:-/tmp}/quorumcast-init.sh" "$sim/scripts/init.sh"
# Certificates as make-secret.sh makes them (the quorumcast binary of the image), then laid
# out as the Secret volume: flat files, root:fsGroup, defaultMode 0440.
docker run --rm --user 0:0 --network none --entrypoint /bin/sh -v "$sim:/sim" "$image" -c '
set -eu
quorumcast certs init --out /sim/certs/ca >/dev/null
cp /sim/certs/ca/ca.pem /sim/secret/ca.pem
for i in 1 2 3; do
  quorumcast certs issue --ca /sim/certs/ca --node-id $i \
    --san quorumcast-$((i - 1)).quorumcast-peers.default.svc.cluster.local --out /sim/certs/node$i >/dev/null
  cp /sim/certs/node$i/node.pem /sim/secret/node$i.pem
  cp /sim/certs/node$i/node.key /sim/secret/node$i.key
done
chown -R 0:10001 /sim/secret && chmod 0440 /sim/secret/* && chmod 0755 /sim/secret /sim/scripts
chown -R '"$(id -u):$(id -g)"' /sim/certs'
docker network create "$tag" >/dev/null
for n in 0 1 2; do
  docker run -d --name "$tag-$n" --hostname "quorumcast-$n" --network "$tag" \
    --network-alias "quorumcast-$n.quorumcast-peers.default.svc.cluster.local" \
    --read-only --tmpfs /etc/quorumcast:uid=10001,gid=10001 \
    -v "$sim/scripts:/scripts:ro" -v "$sim/secret:/certs:ro" \
    -v "$tag-recordings-$n:/var/lib/quorumcast/recordings" -v "$tag-state-$n:/var/lib/quorumcast/state" \
    -e POD_NAME="quorumcast-$n" -e POD_NAMESPACE=default -e PEER_SERVICE=quorumcast-peers \
    -e INITIAL_MEMBERS=3 -e CLUSTER_DOMAIN=cluster.local -e QUORUMCAST_CONFIG=/etc/quorumcast/node.toml \
    --entrypoint /bin/sh "$image" -c 'sh /scripts/init.sh && exec quorumcast node' >/dev/null
done
deadline=$((SECONDS + 90))
for n in 0 1 2; do
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$tag-$n")" = healthy ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      docker logs --tail 30 "$tag-$n" >&2
      echo "check.sh: pod quorumcast-$n did not become healthy" >&2
      exit 1
    fi
    sleep 1
  done
done
docker exec "$tag-0" quorumcast cluster status --node 127.0.0.1:8080
# Each pod's view: "<leader> <voters>"; all three must agree on one leader and three voters.
views="$(for n in 0 1 2; do
  docker exec "$tag-$n" quorumcast cluster status --json --node 127.0.0.1:8080 |
    python3 -c 'import json, sys; s = json.load(sys.stdin)
print(s["leader"], sum(m["role"] == "voter" for m in s["members"]))'
done | sort -u)"
read -r leader voters <<<"$views"
if [ "$(echo "$views" | wc -l)" != 1 ] || [ "$leader" = None ] || [ "$voters" != 3 ]; then
  echo "check.sh: the pods' views (leader voters) differ or lack a leader: $views" >&2
  exit 1
fi
echo "three pods healthy, leader node $leader, $voters voters (simulated with Docker, not Kubernetes)"
