#!/usr/bin/env bash
# The same `docker stack deploy` / `docker stack rm` work pvcheck does, as a shell loop: the
# benchmark's baseline for the recipe deploy and the throwaway stacks (bench/bench.py).
#
#   bash bench/stacks.sh recipe COMPOSE STACK SECRET_NAME HOST PORT
#       install-to-teardown of one recipe: its secret, deploy, running, route answers, rm,
#       its volume and secret removed
#   bash bench/stacks.sh throwaways NET CONCURRENCY COMPOSE...
#       each file deployed as a stack (CONCURRENCY at a time), all running, all removed with
#       concurrent `docker stack rm`, endpoints released and stack networks gone
set -euo pipefail

deploy() { docker stack deploy --resolve-image never -c "$2" "$1" > /dev/null 2>&1; }
wait_for() { # seconds command...: retry until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.25; done; }
stack_gone() { [ -z "$(docker ps -aq --filter label=com.docker.stack.namespace="$1")" ] &&
  [ -z "$(docker service ls -q --filter label=com.docker.stack.namespace="$1")" ]; }

recipe() {
  local compose=$1 stack=$2 secret=$3 host=$4 port=$5
  head -c 32 /dev/urandom | base64 | docker secret create "$secret" - > /dev/null
  deploy "$stack" "$compose"
  running() { [ "$(docker service ls --filter label=com.docker.stack.namespace="$stack" --format '{{.Replicas}}')" = "1/1" ]; }
  answers() { [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' --connect-to "$host:80:127.0.0.1:$port" "http://$host/")" = 200 ]; }
  wait_for 90 running && wait_for 90 answers
  docker stack rm "$stack" > /dev/null
  wait_for 90 stack_gone "$stack"
  wait_for 60 docker volume rm "${stack}_content" > /dev/null 2>&1
  docker secret rm "$secret" > /dev/null
}

throwaways() {
  local net=$1 concurrency=$2; shift 2
  local stacks=() f
  for f in "$@"; do stacks+=("$(basename "$f" .yml)"); done
  endpoints() { docker network inspect -v "$net" --format '{{range .Services}}{{len .Tasks}} {{end}}' |
    awk '{n=0; for(i=1;i<=NF;i++) n+=$i; print n}'; }
  local base; base=$(endpoints)
  printf '%s\n' "$@" | xargs -P "$concurrency" -I{} sh -c \
    'docker stack deploy --resolve-image never -c "$1" "$(basename "$1" .yml)" > /dev/null 2>&1' _ {}
  running() { [ "$(docker service ls --filter "label=pvcheck.role=throwaway" --format '{{.Replicas}}' | grep -c '^1/1')" -ge "${#stacks[@]}" ]; }
  wait_for 120 running
  printf '%s\n' "${stacks[@]}" | xargs -P "$concurrency" -I{} sh -c \
    'docker stack rm "$1" > /dev/null 2>&1 || true' _ {}
  released() { [ "$(endpoints)" -le "$base" ]; }
  wait_for 120 released
  # What `docker stack rm` could not remove while a task held it goes once the task is gone.
  for s in "${stacks[@]}"; do wait_for 60 sh -c "docker network rm ${s}_internal > /dev/null 2>&1 || ! docker network inspect ${s}_internal > /dev/null 2>&1"; done
}

"$@"
