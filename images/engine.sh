#!/usr/bin/env bash
# A Docker Engine for `make images`, `make run RUNNER=docker`, the container tests and .ci/run.
#
#   eval "$(images/engine.sh start)"   use DOCKER_HOST / a running daemon, or install Debian's
#                                      docker.io and start dockerd on a private socket; prints
#                                      DOCKER_HOST=... and DEPTH_ENGINE_STARTED=1|0 for eval
#   images/engine.sh stop              stop the private dockerd, only if this script started it
#   images/engine.sh status            say which engine answers (exit 0) or why none (exit 3)
#
# Exit status 3 means "no engine can be had here" (no root, no apt, install failed); its one-line
# reason is on stderr and in $DEPTH_ENGINE_DIR/unavailable, so tests skip with that reason.
# Settings: DEPTH_ENGINE_DIR (state, data-root; default /var/lib/depth-engine),
#           DEPTH_ENGINE_RUN (socket, exec-root, pidfile; default /run/depth-engine),
#           DEPTH_ENGINE_NOFILE (default 20000: the hard nofile limit of the machine),
#           DEPTH_ENGINE_WAIT_S (default 60).
set -euo pipefail

state="${DEPTH_ENGINE_DIR:-/var/lib/depth-engine}"
run="${DEPTH_ENGINE_RUN:-/run/depth-engine}"
nofile="${DEPTH_ENGINE_NOFILE:-20000}"
wait_s="${DEPTH_ENGINE_WAIT_S:-60}"
sock="$run/docker.sock"
pidfile="$run/docker.pid"

say() { echo "engine: $*" >&2; }

unavailable() {
  say "no Docker Engine: $*"
  mkdir -p "$state" 2>/dev/null && echo "$*" > "$state/unavailable" 2>/dev/null || true
  exit 3
}

answers() {  # answers HOST: the daemon at HOST replies to `docker version`
  DOCKER_HOST="$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

emit() {  # emit HOST STARTED
  rm -f "$state/unavailable" 2>/dev/null || true
  echo "DOCKER_HOST=$1"
  echo "DEPTH_ENGINE_STARTED=$2"
}

find_running() {
  if [[ -n "${DOCKER_HOST:-}" ]]; then
    answers "$DOCKER_HOST" && { echo "$DOCKER_HOST"; return 0; }
    say "DOCKER_HOST=$DOCKER_HOST does not answer; looking for another engine"
  fi
  local candidate
  for candidate in "unix://$sock" unix:///var/run/docker.sock; do
    [[ -S "${candidate#unix://}" ]] && answers "$candidate" && { echo "$candidate"; return 0; }
  done
  return 1
}

install_engine() {
  command -v dockerd >/dev/null 2>&1 && return 0
  [[ "$(id -u)" == "0" ]] || unavailable "dockerd is not installed and installing it needs root (apt-get install docker.io)"
  command -v apt-get >/dev/null 2>&1 || unavailable "dockerd is not installed and there is no apt-get to install Debian's docker.io"
  say "installing Debian's docker.io (apt-get)"
  local try
  for try in 1 2 3; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker.io iptables >"$state/apt.log" 2>&1; then
      return 0
    fi
    apt-get update -q >>"$state/apt.log" 2>&1 || true
    sleep $((try * 5))
  done
  unavailable "apt-get install docker.io failed 3 times (log: $state/apt.log)"
}

start_daemon() {
  mkdir -p "$state/root" "$run/exec"
  local log="$state/dockerd.log"
  say "starting dockerd on unix://$sock (data-root $state/root, log $log)"
  # setsid: the daemon outlives this script and the caller's process group.
  setsid dockerd --host "unix://$sock" --data-root "$state/root" --exec-root "$run/exec" \
    --pidfile "$pidfile" --default-ulimit "nofile=$nofile:$nofile" >"$log" 2>&1 < /dev/null &
  local pid=$! waited=0
  echo "$pid" > "$state/started-by-engine-sh"
  until answers "unix://$sock"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$state/started-by-engine-sh"
      unavailable "dockerd exited during start-up on unix://$sock: $(tail -n 1 "$log")"
    fi
    ((waited++ < wait_s)) || { kill "$pid" 2>/dev/null || true; unavailable "dockerd on unix://$sock did not answer within ${wait_s}s (log: $log)"; }
    sleep 1
  done
}

cmd_start() {
  command -v docker >/dev/null 2>&1 || [[ "$(id -u)" == "0" ]] || unavailable "no docker CLI and no root to install one"
  local host
  if host="$(find_running)"; then
    emit "$host" 0
    return 0
  fi
  mkdir -p "$state" 2>/dev/null || unavailable "cannot create $state (set DEPTH_ENGINE_DIR)"
  install_engine
  start_daemon
  emit "unix://$sock" 1
}

cmd_stop() {
  local marker="$state/started-by-engine-sh"
  if [[ ! -f "$marker" ]]; then
    say "nothing to stop: no dockerd started by this script"
    return 0
  fi
  local pid
  pid="$(cat "$marker")"
  if kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
    say "stopping dockerd (pid $pid, unix://$sock)"
    kill -TERM "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited++ < 30)); do sleep 1; done
    kill -0 "$pid" 2>/dev/null && { say "dockerd (pid $pid) still running after 30 s"; return 1; }
  fi
  rm -f "$marker"
}

cmd_status() {
  local host
  if host="$(find_running)"; then
    echo "engine: $host answers (server $(DOCKER_HOST="$host" docker version --format '{{.Server.Version}}'))"
    return 0
  fi
  [[ -f "$state/unavailable" ]] && say "no Docker Engine: $(cat "$state/unavailable")"
  say "no engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}, unix://$sock, /var/run/docker.sock)"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
