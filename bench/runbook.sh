#!/usr/bin/env bash
# The plain runbook, as an operator runs it by hand on the lab: the same checks and the same
# reproduction as pvcheck, one command after another, with the docker CLI and curl only.
# It is the benchmark's baseline; bench/bench.py times it against `pvcheck run`.
#
#   bash bench/runbook.sh DOCS_DIR
#
# Everything it deploys is named rb-*; it removes what it made before it exits.
set -euo pipefail

DOCS=${1:?machine-docs folder (with STATUS-pvfix.md)}
HERE=$(cd "$(dirname "$0")/.." && pwd)
NET=proxy
SUBNET=10.20.0.0/16
PORT=18080
LOG=/var/log/pvcheck-lab/dockerd.log
BATCH=${BATCH:-5}
SERVICES="lab-traefik_app lab-drone_app lab-bridge_app lab-dashboard_app lab-reports_app"
# host path expected-status body
ROUTES="drone.lab.test / 303 -
drone.lab.test /healthz 200 ok
ci.lab.test / 200 -
bridge.lab.test /health 200 -
report.lab.test / 200 -
traefik.lab.test /api/version 200 Version"
VIP='could not find an available IP while allocating VIP'

fail() { echo "runbook: FAIL: $*" >&2; exit 1; }
cleanup() { # whatever way it ends, the stacks it made go
  for stack in $(docker stack ls --format '{{.Name}}' | grep '^rb-'); do
    docker stack rm "$stack" > /dev/null
  done
}
trap cleanup EXIT
endpoints() { docker network inspect -v "$NET" --format '{{range .Services}}{{len .Tasks}} {{end}}{{len .Containers}}' |
  awk '{n=0; for(i=1;i<=NF;i++) n+=$i; print n}'; }
vips() { docker network inspect -v "$NET" --format '{{range $k, $v := .Services}}{{$k}} {{end}}' | wc -w; }
curl_route() { # host path -> "status body"
  curl -s -m 5 -o /tmp/runbook.body -w '%{http_code}' --connect-to "$1:80:127.0.0.1:$PORT" "http://$1$2" || true; }
deploy() { # stack: the compose file on stdin (the CLI's note about --detach is not news)
  docker stack deploy --resolve-image never -c - "$1" 2> >(grep -v -e 'detach' >&2) > /dev/null; }
wait_for() { # seconds command...: retry until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 1; done; }

# 1. preconditions and facts
grep -qx '## DONE' "$DOCS/STATUS-pvfix.md" || fail "pvfix is not DONE"
[ "$(docker network inspect "$NET" --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}')" = "$SUBNET" ] ||
  fail "$NET subnet"
for svc in $SERVICES; do
  replicas=$(docker service ls --filter "name=$svc" --format '{{.Replicas}}')
  [ "${replicas%% *}" = "1/1" ] || fail "$svc has $replicas"
  docker service ps "$svc" --format '{{.CurrentState}}' > /dev/null
done
docker stack ls > /dev/null
echo "facts: $(vips) VIPs, $(endpoints) task/container endpoints on $NET"
echo "log: $(grep -c "$VIP" "$LOG" || true) VIP lines in the docker log"

# 2. routes, one after another
while read -r host path want body; do
  got=$(curl_route "$host" "$path")
  [ "$got" = "$want" ] || fail "route $host$path answered $got, want $want"
  [ "$body" = "-" ] || grep -q "$body" /tmp/runbook.body || fail "route $host$path body"
done <<< "$ROUTES"

# 3. one recipe deploy (install, upgrade), its route, clean teardown
web=$(docker image inspect -f '{{.Id}}' local/pvcheck-web:1)
recipe() { sed "s|local/pvcheck-web:1|$web|" "$HERE/lab/recipes/hello/$1"; }
hello_up() { [ "$(curl_route hello.lab.test /)" = 200 ] && grep -q "hello recipe" /tmp/runbook.body; }
before=$(endpoints)
recipe compose.yml | deploy rb-hello
wait_for 90 hello_up || fail "recipe route never answered"
recipe compose.upgrade.yml | deploy rb-hello
# The same convergence check as pvcheck's: swarm says the update completed, then the route.
updated() { [ "$(docker service inspect rb-hello_app --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')" = completed ]; }
wait_for 90 updated || fail "the upgrade did not complete"
wait_for 90 hello_up || fail "recipe route after upgrade"
docker stack rm rb-hello > /dev/null
gone() { [ -z "$(docker service ls -q --filter label=com.docker.stack.namespace="$1")" ] && [ "$(endpoints)" -le "$before" ]; }
wait_for 60 gone rb-hello || fail "recipe left endpoints"
echo "deploy: install + upgrade answered, teardown clean"

# 4. the allocator reproduction: throwaway published-port stacks, serially
busybox=$(docker image inspect -f '{{.Id}}' local/busybox:1)
base=$(endpoints)
for i in $(seq 1 "$BATCH"); do
  cat <<YAML | deploy "rb-alloc-$i"
services:
  app:
    image: $busybox
    command: ["sleep", "3600"]
    networks: [$NET]
    ports: [{target: 80, mode: ingress}]
    stop_signal: KILL
    stop_grace_period: 1s
networks:
  $NET: {external: true}
YAML
done
running() { [ "$(docker service ls --filter name=rb-alloc- --format '{{.Replicas}}' | grep -c '^1/1')" -eq "$BATCH" ]; }
wait_for 120 running || fail "throwaways never ran"
peak=$(endpoints)
for i in $(seq 1 "$BATCH"); do docker stack rm "rb-alloc-$i" > /dev/null; done
released() { [ "$(endpoints)" -le "$base" ]; }
wait_for 120 released || fail "the allocator kept endpoints"
echo "allocator: $base -> $peak -> $(endpoints) endpoints"

# 5. fresh logs and the upgrade guard
echo "log: $(grep -c "$VIP" "$LOG" || true) VIP lines after the reproduction"
grep -q "available IP while allocating VIP" "$HERE/lab/upgrade-all/SKILL.md" || fail "guard"
echo "runbook: PASS"
