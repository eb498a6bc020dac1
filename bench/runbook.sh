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
SUBNET=10.10.0.0/16
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
cleanup() { # whatever way it ends, what it made goes
  for stack in $(docker stack ls --format '{{.Name}}' | grep '^rb-'); do
    docker stack rm "$stack" > /dev/null
  done
  docker secret rm rb-notes_api_key_v1 > /dev/null 2>&1 || true
  docker service ls -q --filter label=rb=probe | xargs -r docker service rm > /dev/null 2>&1 || true
  docker network rm rb-scratch > /dev/null 2>&1 || true
}
# Only on the lab's own engine: its proxy network carries the lab label.
[ "$(docker network inspect "$NET" --format '{{index .Labels "pvcheck.lab"}}' 2>/dev/null)" = 1 ] ||
  fail "$NET on this engine was not made by the lab; nothing done"
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

# 3. one recipe deploy, its four tiers, clean teardown (the notes recipe, as abra deploys it:
#    the env file plus STACK_NAME and DOMAIN, its secret generated first)
NOTES=$HERE/lab/recipes/notes
STACK=rb-notes
HOST=notes.lab.test
KEY=$(head -c 32 /dev/urandom | base64)
app_env() { # the env file's KEY=VALUE lines, read (never run as shell code)
  grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$NOTES/.env.sample" | sed -e 's/[[:space:]]*#.*$//'; }
notes() { # APP_VERSION: docker stack deploy interpolates from this environment only
  (cd "$NOTES" && mapfile -t vars < <(app_env) &&
   env -i PATH="$PATH" "${vars[@]}" STACK_NAME=$STACK DOMAIN=$HOST APP_VERSION="$1" \
     docker stack deploy --resolve-image never -c - "$STACK" < compose.yml 2> >(grep -v -e 'detach' >&2) > /dev/null); }
page() { [ "$(curl_route "$HOST" "$1")" = 200 ] && grep -q "$2" /tmp/runbook.body; }
updated() { [ "$(docker service inspect ${STACK}_app --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')" = completed ]; }
task() { docker ps -q --filter label=com.docker.swarm.service.name=${STACK}_app --filter status=running | head -1; }
before=$(endpoints)
printf %s "$KEY" | docker secret create "${STACK}_api_key_v1" - > /dev/null
notes 1
wait_for 90 page / "notes 1 on $HOST" || fail "install: the recipe's page never answered"
notes 2
wait_for 90 updated || fail "upgrade: the update did not complete"
wait_for 90 page / "notes 2 on $HOST" || fail "upgrade: the new version's page"
marker=rb-$RANDOM$RANDOM
docker exec "$(task)" sh -c "echo $marker > /srv/www/data/pvcheck-marker.txt"
docker exec "$(task)" tar -C /srv/www/data -cf - . > /tmp/runbook.tar
docker stack rm "$STACK" > /dev/null
gone() { [ -z "$(docker ps -aq --filter label=com.docker.stack.namespace="$1")" ] && [ -z "$(docker service ls -q --filter label=com.docker.stack.namespace="$1")" ]; }
wait_for 90 gone "$STACK" || fail "backup: the stack did not go"
wait_for 60 docker volume rm "${STACK}_content" > /dev/null 2>&1 || fail "backup: the volume"
notes 2
wait_for 90 page / "notes 2 on $HOST" || fail "restore: redeploy"
docker exec -i "$(task)" tar -C /srv/www/data -xf - < /tmp/runbook.tar
wait_for 30 page /data/pvcheck-marker.txt "$marker" || fail "restore: the marker"
page /config.txt "config rendered for ${STACK}_app on $HOST" || fail "functional: config"
page /secret.sha256 "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)" || fail "functional: secret"
docker stack rm "$STACK" > /dev/null
wait_for 90 gone "$STACK" || fail "teardown"
wait_for 60 docker volume rm "${STACK}_content" > /dev/null 2>&1 || fail "teardown: volume"
docker secret rm "${STACK}_api_key_v1" > /dev/null
released() { [ "$(endpoints)" -le "$before" ]; }
wait_for 60 released || fail "recipe left endpoints"
echo "deploy: install, upgrade, backup/restore, functional; teardown clean"

# 4. the allocator reproduction, as pvcheck does it (issue 27): ingress's headroom counted by
#    a fill of minimal published-port services (no task), then recipe-shaped throwaway stacks
#    on a scratch overlay of their own, removed by concurrent `docker stack rm`, then the
#    scratch network filled one task-less service at a time until the allocator refuses a VIP:
#    what it still holds after the removals, listed or not.
busybox=local/busybox:1
SCRATCH=rb-scratch SCRATCH_SUBNET=10.254.7.0/26 GRACE=10 FLOOR_PCT=50 INGRESS_MAX=256
capacity() { local p=${1#*/}; echo $(( (1 << (32 - p)) - 3 )); }
has_vip() { [ "$(docker service inspect "$1" --format '{{len .Endpoint.VirtualIPs}}' 2>/dev/null)" -gt 0 ]; }
vip_within() { # service seconds: the allocator hands a VIP out in milliseconds, or never
  local deadline=$((SECONDS + $2)); until has_vip "$1"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.05; done; }
fill() { # network-or-ingress limit batch prefix: services created until one is refused; prints the count
  local net=$1 limit=$2 batch=$3 prefix=$4 made=0 got=0 refused=0 names=() b n
  local where=(--network "$net"); [ "$net" = ingress ] && where=(--publish target=80)
  while [ $got -lt "$limit" ] && [ $refused -eq 0 ]; do
    b=()
    for _ in $(seq 1 $(( limit - got < batch ? limit - got : batch ))); do
      n=$prefix-$made; made=$((made + 1)); b+=("$n"); names+=("$n")
      docker service create -d -q --replicas 0 --name "$n" --label rb=probe "${where[@]}" $busybox true > /dev/null 2>&1
    done
    for n in "${b[@]}"; do if vip_within "$n" 3; then got=$((got + 1)); else refused=1; fi; done
  done
  docker service rm "${names[@]}" > /dev/null
  echo "$got"
}
ing_used=$(docker network inspect -v ingress --format '{{range .Services}}{{len .Tasks}} {{end}}{{len .Containers}}' | awk '{n=0; for(i=1;i<=NF;i++) n+=$i; print n}')
ing_cap=$(capacity "$(docker network inspect ingress --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}')")
need=$(( (ing_cap * FLOOR_PCT + 99) / 100 )); free=$((ing_cap - ing_used))
limit=$(( need < INGRESS_MAX ? need : INGRESS_MAX )); limit=$(( limit < free ? limit : free ))
echo "ingress: $(fill ingress "$limit" 8 rb-ing) of $limit probe services got a VIP"
docker network create -d overlay --subnet "$SCRATCH_SUBNET" --label rb=scratch "$SCRATCH" > /dev/null
scratch_used() { docker network inspect -v "$SCRATCH" --format '{{range .Services}}{{len .Tasks}} {{end}}' | awk '{n=0; for(i=1;i<=NF;i++) n+=$i; print n}'; }
for i in $(seq 1 "$BATCH"); do
  cat <<YAML | deploy "rb-alloc-$i"
services:
  app:
    image: $busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
    networks: [proxy, internal]
    stop_grace_period: ${GRACE}s
    deploy:
      labels: {traefik.enable: "true", traefik.http.routers.rb-alloc-$i.rule: "Host(\`rb-alloc-$i.pvcheck.invalid\`)", traefik.http.services.rb-alloc-$i.loadbalancer.server.port: "80"}
networks:
  proxy: {external: true, name: $SCRATCH}
  internal: {}
YAML
done
running() { [ "$(docker service ls --filter name=rb-alloc- --format '{{.Replicas}}' | grep -c '^1/1')" -eq "$BATCH" ]; }
wait_for 120 running || fail "throwaways never ran"
peak=$(scratch_used)
for i in $(seq 1 "$BATCH"); do docker stack rm "rb-alloc-$i" > /dev/null 2>&1 & done; wait
scratch_released() { [ "$(scratch_used)" -eq 0 ]; }
wait_for 120 scratch_released || fail "the allocator kept endpoints"
for i in $(seq 1 "$BATCH"); do
  wait_for 60 sh -c "docker network rm rb-alloc-${i}_internal > /dev/null 2>&1 || ! docker network inspect rb-alloc-${i}_internal > /dev/null 2>&1" ||
    fail "rb-alloc-$i left its network"
done
scratch_cap=$(capacity "$SCRATCH_SUBNET")
allocatable=$(fill "$SCRATCH" "$scratch_cap" 1 rb-probe)
wait_for 60 sh -c "docker network rm $SCRATCH > /dev/null 2>&1" || fail "the scratch network stayed"
echo "allocator: $peak endpoints at the peak; $allocatable/$scratch_cap allocatable after the removals"

# 5. fresh logs and the upgrade guard
echo "log: $(grep -c "$VIP" "$LOG" || true) VIP lines after the reproduction"
grep -q "available IP while allocating VIP" "$HERE/lab/upgrade-all/SKILL.md" || fail "guard"
echo "runbook: PASS"
