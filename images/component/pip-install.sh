#!/bin/sh
# pip inside an image build (images/component/Dockerfile*): installs a hash-locked requirements
# file into /opt/venv. What a build behind a firewall needs comes from images/build.sh as
# build arguments, never as image content:
#   BUILD_FILES_URL  a loopback HTTP server of images/build.sh (the build runs on the host
#                    network) with wheels/ (the host's wheel cache), extra/ (--wheels DIR) and,
#                    when --ca-bundle was given, ca.pem. The CA is fetched, used for this one pip
#                    command and deleted in the same RUN: it is in no layer and in no ENV.
#   PIP_OFFLINE=1    no package index: the wheels/ and extra/ directories only.
#   PIP_RETRIES, PIP_TIMEOUT, PIP_EXTRA_INDEX (e.g. NVIDIA's index for TensorRT's libraries).
# Usage: pip-install.sh [pip install arguments...]
set -eu
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
set -- --no-cache-dir --retries "${PIP_RETRIES:-5}" --timeout "${PIP_TIMEOUT:-60}" "$@"
if [ -n "${BUILD_FILES_URL:-}" ]; then
  fetch() { python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=30).read())' "$1"; }
  if fetch "$BUILD_FILES_URL/ca.pem" > "$tmp/extra.pem" 2>/dev/null; then
    # The extra CA is added to pip's own trust store (certifi), not put in its place.
    cat "$(python3 -m pip._vendor.certifi 2>/dev/null || python3 -c 'import certifi; print(certifi.where())')" \
      "$tmp/extra.pem" > "$tmp/bundle.pem"
    set -- --cert "$tmp/bundle.pem" "$@"
  fi
  set -- --find-links "$BUILD_FILES_URL/wheels/" --find-links "$BUILD_FILES_URL/extra/" "$@"
fi
if [ "${PIP_OFFLINE:-0}" = 1 ]; then
  set -- --no-index "$@"
elif [ -n "${PIP_EXTRA_INDEX:-}" ]; then
  set -- --extra-index-url "$PIP_EXTRA_INDEX" "$@"
fi
python3 -m pip install "$@"
