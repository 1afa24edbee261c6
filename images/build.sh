#!/usr/bin/env bash
# Build the images named in images/images.env (the one place for image names and tags), here or
# behind a firewall. `make images` runs this.
#
#   images/build.sh [options] [component] [cuda] [transformer]   (default: every image whose
#                 Dockerfile exists and that can be built here: cuda only with --extra-index, or
#                 TensorRT's libraries wheel in --wheels DIR or the wheel cache; a skipped image
#                 is named in one line, with how to build it)
# Options (each also an environment variable):
#   --base IMAGE        base of the CPU and transformer images (BASE_IMAGE; default python:3.11.9-
#                       slim-bookworm). Used when present or pullable; otherwise a Debian bookworm
#                       base made with debootstrap from this machine's apt mirror, cached as
#                       depth-base:bookworm-py311-<hash> and made only when that tag is missing.
#   --ca-bundle FILE    an extra CA bundle pip trusts during the build (BUILD_CA_BUNDLE), e.g.
#                       a proxy's CA. Handed to the build by a loopback file server, used and
#                       deleted inside one RUN: never in a layer, a build argument or ENV.
#   --wheels DIR        a local wheel directory pip looks in first (WHEEL_DIR, --find-links).
#   --offline / --online  whether pip inside the build may use a package index (PIP_OFFLINE=1/0).
#                       Default: offline for the images whose every locked file the wheel cache
#                       holds (and no --extra-index is given), online otherwise.
#   --pip-retries N     (PIP_RETRIES, default 5)   --pip-timeout S   (PIP_TIMEOUT, default 60)
#   --extra-index URL   an extra index for the CUDA image's TensorRT libraries (PIP_EXTRA_INDEX)
#   --no-prefetch       do not fill the wheel cache with the host's pip first (PREFETCH=0)
#   --push              push after building (PUSH=1)
# The host's pip (its configuration, its local indexes, its cache) downloads every locked wheel
# once into WHEEL_CACHE (default /var/cache/depth-images/wheels), which the build reads: a
# rebuild downloads nothing twice. Each image is built to a temporary tag and retagged only when
# its build succeeded: a failed build leaves the previous image under its tag.
# Exit status: 0 built; 1 a build failed; 2 bad usage / missing tool; 3 no engine (engine.sh);
# 4 a package index stayed unreachable after retries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
images_env="${IMAGES_ENV:-images/images.env}"
# shellcheck source=images.env
source "$images_env"

base="${BASE_IMAGE:-python:3.11.9-slim-bookworm}"
ca_bundle="${BUILD_CA_BUNDLE:-}"
wheel_dir="${WHEEL_DIR:-}"
offline="${PIP_OFFLINE:-auto}"
retries="${PIP_RETRIES:-5}"
timeout_s="${PIP_TIMEOUT:-60}"
extra_index="${PIP_EXTRA_INDEX:-}"
prefetch="${PREFETCH:-1}"
push="${PUSH:-0}"
cache="${WHEEL_CACHE:-/var/cache/depth-images/wheels}"
host_python="${HOST_PYTHON:-}"
targets=()

say() { echo "images: $*" >&2; }
die() { local code="$1"; shift; say "$*"; exit "$code"; }

while (($#)); do
  case "$1" in
    --base) base="$2"; shift ;;
    --ca-bundle) ca_bundle="$2"; shift ;;
    --wheels) wheel_dir="$2"; shift ;;
    --offline) offline=1 ;;
    --online) offline=0 ;;
    --pip-retries) retries="$2"; shift ;;
    --pip-timeout) timeout_s="$2"; shift ;;
    --extra-index) extra_index="$2"; shift ;;
    --no-prefetch) prefetch=0 ;;
    --push) push=1 ;;
    component|cuda|transformer) targets+=("$1") ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) die 2 "unknown argument '$1' (see images/build.sh --help)" ;;
  esac
  shift
done
[[ -z "$ca_bundle" || -r "$ca_bundle" ]] || die 2 "--ca-bundle $ca_bundle: not a readable file"
[[ -z "$wheel_dir" || -d "$wheel_dir" ]] || die 2 "--wheels $wheel_dir: not a directory"
[[ "$retries" =~ ^[0-9]+$ && "$timeout_s" =~ ^[0-9]+$ ]] ||
  die 2 "--pip-retries/--pip-timeout: whole numbers expected, got '$retries'/'$timeout_s'"

# image key -> "name:tag|Dockerfile|lock files"
declare -A spec=(
  [component]="$REGISTRY/$COMPONENT_IMAGE:$COMPONENT_TAG|images/component/Dockerfile|images/requirements.lock"
  [cuda]="$REGISTRY/$COMPONENT_IMAGE:$COMPONENT_CUDA_TAG|images/component/Dockerfile.cuda|images/requirements.lock images/requirements-cuda.lock"
)
if [[ -n "${TRANSFORMER_IMAGE:-}" && -n "${TRANSFORMER_TAG:-}" ]]; then
  spec[transformer]="$REGISTRY/$TRANSFORMER_IMAGE:$TRANSFORMER_TAG|images/transformer/Dockerfile|$(ls images/transformer/*.lock 2>/dev/null | tr '\n' ' ' || true)"
fi
trt_libs_reachable() {  # TensorRT's libraries (not on PyPI): an extra index, or their wheel here
  [[ -n "$extra_index" ]] && return 0
  local dir
  for dir in "$wheel_dir" "$cache"; do
    [[ -n "$dir" ]] && compgen -G "$dir/tensorrt_cu12_libs-${TENSORRT_VERSION}-*.whl" >/dev/null &&
      return 0
  done
  return 1
}
skipped=""
if ((${#targets[@]} == 0)); then
  for key in component cuda transformer; do
    [[ -n "${spec[$key]:-}" ]] && [[ -f "$(cut -d'|' -f2 <<<"${spec[$key]}")" ]] || continue
    if [[ "$key" == cuda ]] && ! trt_libs_reachable; then
      skipped="cuda (TensorRT ${TENSORRT_VERSION}'s libraries are not on PyPI: make images IMAGES=cuda IMAGE_ARGS='--extra-index URL' or '--wheels DIR')"
      continue
    fi
    targets+=("$key")
  done
  [[ -z "$skipped" ]] || say "skipping $skipped"
fi
for key in "${targets[@]}"; do
  [[ -n "${spec[$key]:-}" ]] || die 2 "$key: $images_env names no such image"
  [[ -f "$(cut -d'|' -f2 <<<"${spec[$key]}")" ]] || die 2 "$key: $(cut -d'|' -f2 <<<"${spec[$key]}") does not exist"
done

engine_env="$(images/engine.sh start)" || exit 3
eval "$engine_env"
export DOCKER_HOST
engine_gone() { ! timeout 10 docker version >/dev/null 2>&1; }

server_pid=""
files=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  [[ -n "$files" ]] && rm -rf "$files"
}
trap cleanup EXIT

# shellcheck source=base.sh
source images/base.sh
# shellcheck source=wheels.sh
source images/wheels.sh

# Lineage baked into the component images (LABEL + ENV DEPTH_GIT_COMMIT / DEPTH_GIT_DIRTY).
git_commit="$(git rev-parse HEAD 2>/dev/null || true)"
git_dirty=false
[[ -z "$(git status --porcelain 2>/dev/null)" ]] || git_dirty=true
labels=(
  --label "org.opencontainers.image.source=${SOURCE_URL:-}"
  --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
  --label "org.opencontainers.image.licenses=Apache-2.0"
)

image_offline() {  # image_offline LOCKS: 1 when pip inside the build needs no index
  if [[ "$offline" != auto ]]; then echo "$offline"; return; fi
  if [[ -z "$1" || "$prefetched" != 1 || -n "$extra_index" ]]; then echo 0; else echo 1; fi
}

build_one() {  # build_one KEY BASE
  local key="$1" base_ref="$2" image dockerfile image_locks tmp t0
  IFS='|' read -r image dockerfile image_locks <<<"${spec[$key]}"
  tmp="${image}-building-$$"
  t0=$SECONDS
  say "building $image from $dockerfile (base $base_ref) ..."
  local args=(--network host --build-arg "BASE_IMAGE=$base_ref"
    --build-arg "COMPONENT_BASE=$REGISTRY/$COMPONENT_IMAGE:$COMPONENT_TAG"
    --build-arg "BUILD_FILES_URL=$files_url" --build-arg "PIP_OFFLINE=$(image_offline "${image_locks// /}")"
    --build-arg "PIP_RETRIES=$retries" --build-arg "PIP_TIMEOUT=$timeout_s"
    --build-arg "PIP_EXTRA_INDEX=$extra_index" --build-arg "TENSORRT_VERSION=$TENSORRT_VERSION"
    --build-arg "GIT_COMMIT=$git_commit" --build-arg "GIT_DIRTY=$git_dirty" --build-arg "IMAGE_REF=$image"
    --label "org.opencontainers.image.version=${image##*:}"
    --label "org.opencontainers.image.title=${image%:*}" "${labels[@]}")
  if ! docker build "${args[@]}" -f "$dockerfile" -t "$tmp" .; then
    docker rmi "$tmp" >/dev/null 2>&1 || true
    engine_gone && die 1 "the engine at $DOCKER_HOST stopped answering while building $image"
    die 1 "building $image failed (see above); $image is left as it was"
  fi
  docker tag "$tmp" "$image"
  docker rmi "$tmp" >/dev/null
  local size
  size="$(docker image inspect -f '{{.Size}}' "$image")"
  say "built $image in $((SECONDS - t0)) s, $((size / 1000000)) MB"
  built+=("$image")
}

built=()
base_ref="$(resolve_base "$base")"
locks=()
for key in "${targets[@]}"; do
  read -r -a key_locks <<<"$(cut -d'|' -f3 <<<"${spec[$key]}")"
  locks+=("${key_locks[@]}")
done
prefetched=0
if [[ "$prefetch" == 1 ]] && ((${#locks[@]})); then
  fill_wheel_cache "$cache" "${locks[@]}"
  prefetched=1
fi
serve_build_files
for key in "${targets[@]}"; do
  build_one "$key" "$base_ref"
done
if [[ "$push" == 1 ]]; then
  for image in "${built[@]}"; do docker push "$image"; done
fi
say "done: ${built[*]}$([[ "$push" == 1 ]] && echo ' (pushed)')$([[ -n "$skipped" ]] && echo "; skipped ${skipped%% *}")"
