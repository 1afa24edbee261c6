#!/usr/bin/env bash
# Build and push the component images named in images/images.env (the one place for image names
# and tags) with docker or podman, whichever has a running engine. `make images` runs this.
#   images/build.sh            build + push both images (CPU and CUDA)
#   PUSH=0 images/build.sh     build only
#   ENGINE=podman images/build.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=images.env
source "$root/images/images.env"

engine="${ENGINE:-}"
if [[ -z "$engine" ]]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
      engine="$candidate"
      break
    fi
  done
fi
if [[ -z "$engine" ]] || ! "$engine" info >/dev/null 2>&1; then
  echo "make images: no running container engine found (tried: ${ENGINE:-docker podman};" \
       "'docker info' / 'podman info' failed or the CLI is missing)." >&2
  echo "Start Docker or Podman and rerun, or let CI build them: pushing a tag v* runs" \
       ".github/workflows/images.yml." >&2
  exit 2
fi

cpu="$REGISTRY/$COMPONENT_IMAGE:$COMPONENT_TAG"
cuda="$REGISTRY/$COMPONENT_IMAGE:$COMPONENT_CUDA_TAG"
cd "$root"
"$engine" build -f images/component/Dockerfile -t "$cpu" .
"$engine" build -f images/component/Dockerfile.cuda -t "$cuda" .
done_what="built"
if [[ "${PUSH:-1}" == "1" ]]; then
  "$engine" push "$cpu"
  "$engine" push "$cuda"
  done_what="built and pushed"
fi
echo "$done_what: $cpu $cuda"
