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
