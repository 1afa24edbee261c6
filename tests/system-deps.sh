#!/usr/bin/env bash
# System packages the test suite needs that pip cannot install, installed before the tests run
# (`make test-deps`; .ci/run calls it): Debian's chromium, for the demo's browser test.
# As root with apt-get it installs what is missing (retrying: the registry may be flaky);
# otherwise it says what to install and exits 0 -- the tests that need a package skip, naming it.
set -euo pipefail

# package:command pairs
PACKAGES=("chromium:chromium")

missing=()
for entry in "${PACKAGES[@]}"; do
  command -v "${entry#*:}" >/dev/null 2>&1 || missing+=("${entry%%:*}")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "test-deps: present (${PACKAGES[*]%%:*})"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: missing ${missing[*]}; as root: apt-get install -y ${missing[*]} (their tests skip until then)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
for attempt in 1 2 3; do
  if apt-get update -qq >"$log" 2>&1 \
    && apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    echo "test-deps: installed ${missing[*]}"
    rm -f "$log"
    exit 0
  fi
  sleep $((attempt * 10))
done
echo "test-deps: apt-get could not install ${missing[*]} ($(tail -n 1 "$log")); their tests skip"
rm -f "$log"
exit 0
