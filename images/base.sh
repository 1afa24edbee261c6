# Sourced by images/build.sh: the base image of the CPU component and transformer images.
# resolve_base IMAGE prints the reference to build FROM: IMAGE when the engine has it or can pull
# it, else the local Debian base (made once per package list, then reused by its tag).

# What the Debian base holds: the Python the images run, the shared libpython Triton's python
# backend links against, libgomp for ONNX Runtime/torch threads, CA certificates for pip.
DEBIAN_BASE_PACKAGES="python3.11 python3.11-venv libpython3.11 libgomp1 ca-certificates"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"

apt_mirror() {  # the first Debian mirror this machine's apt uses (deb822 or one-line sources)
  local uri
  uri="$(grep -h -o -E '^URIs:[[:space:]]*[^[:space:]]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 | awk '{print $2}')"
  [[ -n "$uri" ]] || uri="$(grep -h -o -E '^deb[[:space:]]+[^[:space:]]+/debian/?[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 | awk '{print $2}')"
  echo "${uri:-http://deb.debian.org/debian}"
}

debian_base_tag() {
  local digest
  digest="$(printf '%s %s minbase' "$DEBIAN_SUITE" "$DEBIAN_BASE_PACKAGES" | sha256sum | cut -c1-12)"
  echo "depth-base:${DEBIAN_SUITE}-py311-$digest"
}

make_debian_base() {  # make_debian_base TAG
  local tag="$1" mirror rootfs t0=$SECONDS
  if ! command -v debootstrap >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 ||
      die 2 "no base image: pull one (--base IMAGE), or install debootstrap (apt-get install debootstrap) as root to make a Debian $DEBIAN_SUITE base"
    say "installing debootstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
      die 2 "apt-get install debootstrap failed: install it, or pass --base IMAGE"
  fi
  [[ "$(id -u)" == 0 ]] || die 2 "making the Debian base with debootstrap needs root; or pass --base IMAGE"
  mirror="$(apt_mirror)"
  rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/depth-base.XXXXXX")"
  say "making $tag with debootstrap ($DEBIAN_SUITE minbase from $mirror) ..."
  if ! debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    cp "$rootfs/debootstrap/debootstrap.log" "$rootfs.log" 2>/dev/null || true
    rm -rf "$rootfs"
    die 1 "debootstrap failed (log: $rootfs.log)"
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  # The minbase has no mirror configured for apt inside the image: the one it was made from.
  echo "deb $mirror $DEBIAN_SUITE main" > "$rootfs/etc/apt/sources.list"
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag-minbase" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  # The packages go in with apt in a build step (debootstrap --include cannot configure
  # python3.11-venv's dependencies in a minbase). apt fetches over plain HTTP and checks the
  # archive's signatures itself.
  docker build --network host -t "$tag" - >&2 <<DOCKERFILE || die 1 "installing the base packages failed"
FROM $tag-minbase
RUN apt-get update && apt-get install -y --no-install-recommends $DEBIAN_BASE_PACKAGES \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
DOCKERFILE
  docker rmi "$tag-minbase" >/dev/null
  say "made $tag in $((SECONDS - t0)) s"
}

resolve_base() {  # resolve_base IMAGE
  local image="$1"
  if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"; return
  fi
  if timeout 120 docker pull -q "$image" >/dev/null 2>&1; then
    say "pulled $image"
    echo "$image"; return
  fi
  local tag
  tag="$(debian_base_tag)"
  say "$image cannot be pulled: building on the local Debian base $tag"
  docker image inspect "$tag" >/dev/null 2>&1 || make_debian_base "$tag"
  echo "$tag"
}
