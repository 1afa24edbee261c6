# Sourced by images/build.sh: the wheels and files a build reads from the host.

pick_host_python() {
  if [[ -n "$host_python" && -x "$host_python" ]]; then echo "$host_python"
  elif [[ -x .venv/bin/python ]]; then echo .venv/bin/python
  else echo python3
  fi
}

fill_wheel_cache() {  # fill_wheel_cache DIR LOCK...: every locked file, downloaded once
  local dir="$1" py try t0=$SECONDS log
  shift
  if ! mkdir -p "$dir" 2>/dev/null || [[ ! -w "$dir" ]]; then
    dir="${XDG_CACHE_HOME:-$HOME/.cache}/depth-images/wheels"
    mkdir -p "$dir"
  fi
  cache="$dir"
  # A lock file whose files the cache already holds is skipped (pip would re-read and re-hash
  # gigabytes to find that out): each lock leaves a stamp named after its own hash.
  local lock todo=() stamps=()
  for lock in "$@"; do
    local stamp
    stamp="$dir/.complete-$(sha256sum "$lock" | cut -c1-16)"
    [[ -f "$stamp" ]] || { todo+=("$lock"); stamps+=("$stamp"); }
  done
  if ((${#todo[@]} == 0)); then
    say "wheel cache $dir already holds the locked files"
    return 0
  fi
  set -- "${todo[@]}"
  py="$(pick_host_python)"
  log="$(mktemp)"
  local args=(-m pip download --no-deps --require-hashes --dest "$dir" --retries "$retries" --timeout "$timeout_s")
  [[ -n "$wheel_dir" ]] && args+=(--find-links "$wheel_dir")
  [[ -n "$ca_bundle" ]] && args+=(--cert "$ca_bundle")
  for lock in "$@"; do args+=(-r "$lock"); done
  say "filling the wheel cache $dir from the host's pip ($py) ..."
  for try in 1 2 3; do
    if "$py" "${args[@]}" >"$log" 2>&1; then
      touch "${stamps[@]}"
      say "wheel cache ready in $((SECONDS - t0)) s ($(du -sh "$dir" | cut -f1))"
      rm -f "$log"
      return 0
    fi
    grep -q -i -E "hash|ResolutionImpossible|No matching distribution" "$log" && break
    sleep $((try * 10))
  done
  say "last lines of pip download:"; tail -n 5 "$log" >&2
  if grep -q -i -E "hash|No matching distribution" "$log"; then
    die 1 "the lock names files the index does not have or with other hashes: regenerate it (python images/lock.py)"
  fi
  die 4 "a package index stayed unreachable after 3 tries: the locked wheels could not be fetched"
}

serve_build_files() {  # a loopback HTTP server of wheels/, extra/ and (if given) ca.pem
  files="$(mktemp -d)"
  mkdir -p "$files/root"
  ln -s "$cache" "$files/root/wheels"
  if [[ -n "$wheel_dir" ]]; then ln -s "$(cd "$wheel_dir" && pwd)" "$files/root/extra"; else mkdir "$files/root/extra"; fi
  [[ -n "$ca_bundle" ]] && cp "$ca_bundle" "$files/root/ca.pem"
  python3 -c '
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=sys.argv[1])
try:  # the same port every build: the URL is a build argument, so the layer cache holds
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), handler)
except OSError:  # taken: any free port (this build then reinstalls the dependency layer)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
open(sys.argv[2], "w").write(str(server.server_address[1]))
server.serve_forever()
' "$files/root" "$files/port" "${BUILD_FILES_PORT:-47613}" &
  server_pid=$!
  local waited=0
  until [[ -s "$files/port" ]]; do
    ((waited++ < 50)) || die 1 "the build file server did not start"
    sleep 0.1
  done
  files_url="http://127.0.0.1:$(cat "$files/port")"
}
