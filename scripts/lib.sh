# Helpers for the project's scripts (sourced, not run).

cargo_target_dir() {
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then echo "$CARGO_TARGET_DIR"; else echo "$PWD/target"; fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

apt_install() {
  echo "installing Debian packages: $*" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

# The PostgreSQL server binaries the tests and the local runner start.
ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    return 0
  fi
  apt_install postgresql
}

# The Python tools the tests use (cargo-lambda with its zig, moto_server, cfn-lint), in a
# venv reused between runs. Prints the venv's bin dir.
LABLINK_VENV="${LABLINK_VENV:-$HOME/.cache/lablink-venv}"
ensure_venv() {
  local stamp="$LABLINK_VENV/.lablink-requirements"
  if [ -f "$stamp" ] && cmp -s "$stamp" scripts/requirements.txt; then
    echo "$LABLINK_VENV/bin"; return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt_install python3-venv >&2
  fi
  python3 -m venv "$LABLINK_VENV" >&2
  "$LABLINK_VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt >&2
  cp scripts/requirements.txt "$stamp"
  echo "$LABLINK_VENV/bin"
}

# The browser test's Chromium (Debian's package) and its driver (playwright-core from npm,
# pinned by tests/browser/package-lock.json; never `playwright install`).
ensure_browser() {
  if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
  fi
  # The export tests read zips back with Info-ZIP's unzip too.
  command -v unzip >/dev/null || apt_install unzip
  local dir=tests/browser stamp=tests/browser/node_modules/.lablink-lock
  if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$dir/package-lock.json"; then
    echo "installing the browser test's npm packages" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    cp "$dir/package-lock.json" "$stamp"
  fi
}

# A Docker engine for the workspace tests and the local runner's --client-image: Debian's
# docker.io, and dockerd started in the background when none answers (as on a VM, the
# engine runs as root).
ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || apt_install docker.io
  local log="$HOME/.cache/lablink-dockerd.log"
  mkdir -p "$(dirname "$log")"
  echo "starting dockerd (its log: $log)" >&2
  # A session of its own: a test that started it, killed with its process group, must
  # not take the engine with it.
  as_root setsid sh -c 'nohup dockerd >>"$1" 2>&1 </dev/null &' sh "$log"
  local i
  for i in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "dockerd did not answer within 60 s; see $log" >&2
  return 1
}

# The tests' stand-in for a registry's base image: a minimal Debian 12 made by debootstrap
# (git and procps, as the client image needs; glibc and libgcc, as the holder's runtime
# needs), kept in the engine's store between runs. Prints its name.
ensure_test_base() {
  local base=lablink-test-base:bookworm
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    local root
    root="$(mktemp -d)"
    echo "building $base with debootstrap (about a minute)" >&2
    as_root debootstrap --variant=minbase --include=git,procps bookworm "$root" http://deb.debian.org/debian >/dev/null
    as_root tar -C "$root" -c . | docker import - "$base" >/dev/null
    as_root rm -rf "$root"
  fi
  echo "$base"
}

# CI's stand-in for Google's chrome-remote-desktop package, written to the .deb path $1:
# the stand-ins under tests/crd-standin/root/ mirrored to /, on the 148 line, with a
# postinst that, as Google's current one does, does NOT create the group
# chrome-remote-desktop (chromium/chromium 280f0da2's postinst only adds the system user
# _crd_network; talmolab/lablink a1a5c0aa: "postinst skips creating it", so images must),
# and the part of
# Google's dependencies that gives the session an X server (Xvfb, xauth, xdpyinfo), so that
# tests can start the desktop as the host would. The client image's Dockerfile installs it
# in the step that installs Google's package.
build_standin_crd_deb() {
  local out="$1" stage
  stage="$(mktemp -d)" || return 1
  chmod 0755 "$stage"
  cp -a tests/crd-standin/root/. "$stage/"
  mkdir -p "$stage/DEBIAN"
  printf '%s\n' \
    'Package: chrome-remote-desktop' \
    'Version: 148.0.0.0-lablink-standin' \
    'Architecture: amd64' \
    'Depends: xvfb, xauth, x11-utils' \
    'Maintainer: LabLink tests <tests@lablink.invalid>' \
    'Section: misc' \
    'Priority: optional' \
    "Description: LabLink's test stand-in for Chrome Remote Desktop 148" \
    " Shell scripts at Google's paths that behave as CRD 148's start-host and host script" \
    ' do in a container (tests/crd-standin), installed by the client image'"'"'s Dockerfile' \
    ' where no Google server is reachable.' >"$stage/DEBIAN/control"
  printf '%s\n' '#!/bin/sh' 'set -e' \
    "# As Google's current postinst (chromium/chromium 280f0da2): a system user for the" \
    "# host's network process; the group chrome-remote-desktop is left to the image." \
    'getent passwd _crd_network >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin _crd_network' \
    >"$stage/DEBIAN/postinst"
  chmod 0755 "$stage/DEBIAN/postinst"
  SOURCE_DATE_EPOCH=0 dpkg-deb --root-owner-group -Zgzip --build "$stage" "$out" >/dev/null
  local rc=$?
  rm -rf "$stage"
  return $rc
}

# The workspace tests' client image: the real recipe (client-image/Dockerfile, built by
# scripts/build-client-image) on the Debian base above, with Debian's firefox-esr, the
# CRD stand-in .deb above instead of Google's repository, and tests/client-image/hook.sh
# as the workshop hook (the sleap-label stand-in, a set-uid `suid-id`); no registry is needed.
# The build checks contract 1 and that XFCE and the browser start as the desktop user with
# the workspace's settings.
# Tagged with the hash of everything that goes into it (the recipe, the build script,
# these functions, the stand-ins, the hook, the base image's id), so it is built once per
# content and reused by every test; kept in the engine's store. Prints the image name.
ensure_test_client_image() {
  local base
  base="$(ensure_test_base)" || return 1
  local inputs=(client-image scripts/build-client-image tests/crd-standin/root tests/client-image)
  local tag
  tag="$( {
    docker image inspect -f '{{.Id}}' "$base"
    declare -f ensure_test_client_image build_standin_crd_deb
    find "${inputs[@]}" -type f -print0 | sort -z | xargs -0 stat -c '%a %n'
    find "${inputs[@]}" -type f -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-12)"
  local image="lablink-test-client:$tag"
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "building $image (the client image recipe on $base, with the CRD stand-in)" >&2
    local dir
    dir="$(mktemp -d)" || return 1
    local deb="$dir/chrome-remote-desktop_148.0.0.0-lablink-standin_amd64.deb"
    if ! build_standin_crd_deb "$deb" \
      || ! scripts/build-client-image --quiet --tag "$image" --base "$base" \
        --browser distro-firefox-esr --crd-deb "$deb" --hook tests/client-image/hook.sh \
        --check-desktop >/dev/null; then
      rm -rf "$dir"
      return 1
    fi
    rm -rf "$dir"
    # Builds of other contents pile up (each content change is a new image): those older
    # than two days go, unless a container uses them (docker rmi refuses then).
    local old created now
    now="$(date +%s)"
    docker images lablink-test-client --format '{{.Tag}}|{{.CreatedAt}}' | while IFS='|' read -r old created; do
      created="$(date -d "${created% *}" +%s 2>/dev/null)" || continue
      if [ "$old" != "$tag" ] && [ $((now - created)) -gt 172800 ]; then
        docker rmi "lablink-test-client:$old" >/dev/null 2>&1 || true
      fi
    done
  fi
  echo "$image"
}

# The boot rehearsal's VM image (tests/vm-rehearsal/Dockerfile): a debootstrapped
# bookworm with systemd and Docker's engine (docker.io), then cloud-init, the AWS CLI v1
# from wheels fetched here with the project's pip (>= 1.29: it honours endpoint_url), and
# the stand-in metadata service. Tagged by the hash of its inputs: built once per content.
ensure_test_vm_image() {
  local base=lablink-test-vm-base:bookworm
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    local root
    root="$(mktemp -d)"
    echo "building $base with debootstrap (about a minute)" >&2
    as_root debootstrap --variant=minbase \
      --include=systemd,systemd-sysv,dbus,docker.io,iptables,ca-certificates,procps,python3 \
      bookworm "$root" http://deb.debian.org/debian >/dev/null
    as_root tar -C "$root" -c . | docker import - "$base" >/dev/null
    as_root rm -rf "$root"
  fi
  local wheels="$HOME/.cache/lablink/awscli-wheels"
  if [ ! -f "$wheels/.complete" ]; then
    local venv_bin
    venv_bin="$(ensure_venv)" || return 1
    mkdir -p "$wheels"
    "$venv_bin/pip" download -q --disable-pip-version-check --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 --platform any \
      -d "$wheels" 'awscli>=1.29,<2' >&2 || return 1
    touch "$wheels/.complete"
  fi
  local tag
  tag="$( {
    docker image inspect -f '{{.Id}}' "$base"
    declare -f ensure_test_vm_image
    (cd "$wheels" && ls)
    find tests/vm-rehearsal -type f -print0 | sort -z | xargs -0 stat -c '%a %n'
    find tests/vm-rehearsal -type f -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-12)"
  local image="lablink-test-vm:$tag"
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "building $image (the boot rehearsal's VM)" >&2
    local ctx
    ctx="$(mktemp -d)" || return 1
    cp -a tests/vm-rehearsal/. "$ctx/"
    mkdir -p "$ctx/wheels" && cp "$wheels"/*.whl "$ctx/wheels/"
    if ! docker build -q --build-arg "BASE=$base" -t "$image" "$ctx" >/dev/null; then
      rm -rf "$ctx"
      return 1
    fi
    rm -rf "$ctx"
  fi
  echo "$image"
}

# Stand-ins for the holder image's two pinned base images (infra-cdk/holder/Dockerfile),
# which no registry here can serve: the runtime is the Debian base above (glibc and
# libgcc, as in distroless/cc); the builder is a minimal Debian with the C toolchain the
# crates build with (gcc, make) and this machine's own Rust toolchain copied in, tagged
# with its version. Both are kept in the engine's store. Prints "BUILDER RUNTIME".
ensure_test_holder_bases() {
  local runtime
  runtime="$(ensure_test_base)" || return 1
  local sysroot version
  sysroot="$(rustc --print sysroot)"
  version="$(rustc --version | awk '{print $2}')"
  local builder="lablink-test-rust:$version"
  if ! docker image inspect "$builder" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    local root
    root="$(mktemp -d)"
    echo "building $builder with debootstrap and this machine's Rust $version (a few minutes)" >&2
    as_root debootstrap --variant=minbase --include=gcc,libc6-dev,make,ca-certificates,git \
      bookworm "$root" http://deb.debian.org/debian >/dev/null
    as_root cp -a "$sysroot/bin/." "$root/usr/local/bin/"
    as_root cp -a "$sysroot/lib/." "$root/usr/local/lib/"
    # This machine's trusted CAs, so that cargo in the stand-in reaches crates.io through
    # whatever this network puts in between, as cargo on the host does.
    as_root cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    as_root tar -C "$root" -c . | docker import \
      --change 'ENV CARGO_HOME=/usr/local/cargo' \
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$builder" >/dev/null
    as_root rm -rf "$root"
  fi
  echo "$builder $runtime"
}

# The holder's image as the tests build it: scripts/build-holder-image, unchanged, on the
# stand-in bases above, with a stand-in RDS CA bundle (a self-signed certificate made once
# and kept) and its checksum as the pin. Layers are cached by the engine, so a rebuild
# compiles the workspace's crates only. Prints "IMAGE CA_BUNDLE".
ensure_test_holder_image() {
  local bases
  bases="$(ensure_test_holder_bases)" || return 1
  local ca="$HOME/.cache/lablink/test-rds-ca.pem"
  if [ ! -s "$ca" ]; then
    mkdir -p "$(dirname "$ca")"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout /dev/null -days 3650 \
      -subj '/CN=LabLink test stand-in for the RDS CA' -out "$ca.tmp" 2>/dev/null
    mv "$ca.tmp" "$ca"
  fi
  local image=lablink-holder:test log
  log="$(mktemp)"
  if ! scripts/build-holder-image --quiet --tag "$image" --rds-ca "$ca" \
      --rds-ca-sha256 "$(sha256sum "$ca" | cut -d' ' -f1)" \
      --builder-image "${bases% *}" --runtime-image "${bases#* }" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
  echo "$image $ca"
}

# cloud-init's own schema validator for the VMs' user-data tests (Debian's package; it
# brings the python3-yaml the tests read the YAML back with).
ensure_cloud_init() {
  command -v cloud-init >/dev/null && /usr/bin/python3 -c 'import yaml' 2>/dev/null && return 0
  apt_install cloud-init
}
