#!/bin/sh
# LabLink VM bootstrap, run once by cloud-init (runcmd): fetch the client daemon the
# deployment shipped, with this VM's own role (aws s3 cp), check its SHA-256, install it
# and start it under systemd. Its settings are in /etc/lablink/bootstrap.env (root only);
# the daemon's in /etc/lablink/client.env. A failure here is reported at once to the API
# (`POST /api/enroll` with `bootstrap_failure`, authenticated by the launch's enrollment
# secret and this instance's id from the metadata service), so the VM's row says
# "bootstrap failed: …" within a minute instead of at the 20-minute deadline. This
# script's output is in /var/log/cloud-init-output.log.
set -eu
env_file="${LABLINK_BOOTSTRAP_ENV:-/etc/lablink/bootstrap.env}"
client_env="${LABLINK_CLIENT_ENV:-/etc/lablink/client.env}"
imds="${LABLINK_IMDS:-http://169.254.169.254}"
. "$env_file"
dest="${LABLINK_DAEMON_PATH:-/usr/local/bin/lablink-client-daemon}"
tmp="$dest.download"
say() { echo "lablink-bootstrap: $*" >&2; }

# One setting of the daemon's env file (never sourced: its values are not shell).
setting() { sed -n "s/^$1=//p" "$client_env" 2>/dev/null | head -n 1; }

# Tell the API why this VM will never run its daemon (best effort: a few tries).
report() {
  why="$1"
  api="$(setting LABLINK_API_URL)"
  secret="$(setting LABLINK_ENROLL_SECRET)"
  if [ -z "$api" ] || [ -z "$secret" ] || ! command -v curl >/dev/null 2>&1; then
    say "cannot report this failure to the API (no API URL, secret or curl)"
    return 0
  fi
  token="$(curl -fsS -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/latest/api/token" 2>/dev/null || true)"
  id="$(curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/instance-id" 2>/dev/null || true)"
  if [ -z "$id" ]; then
    say "cannot report this failure to the API (no instance id from the metadata service)"
    return 0
  fi
  # JSON strings: our own messages, with \ and " escaped.
  esc() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
  body="{\"instance_id\":\"$(esc "$id")\",\"enrollment_secret\":\"$(esc "$secret")\",\"bootstrap_failure\":\"$(esc "$why")\"}"
  for n in 1 2 3 4 5; do
    if printf '%s' "$body" | curl -fsS -m 10 -o /dev/null -H 'content-type: application/json' \
        --data-binary @- "$api/api/enroll"; then
      say "reported to the API"
      return 0
    fi
    sleep $((n * 2))
  done
  say "could not report this failure to the API"
}

fail() {
  say "$1"
  report "$1"
  exit 1
}

# Before anything of the participant's runs: only root on this host (the daemon, cloud-init,
# the AWS CLI) reaches the metadata service, which holds this user-data (the enrollment
# secret) and the role's credentials; the workspace shares the host's network.
# A packet from a process in the workspace carries its uid (no user namespace), so an
# owner match in OUTPUT sees the desktop user's 1000. TCP only (the service is HTTP): the
# ICMP error REJECT answers with comes from the kernel's own socket, which has no file,
# and xt_owner counts that as not root, so without `-p tcp` the refusal itself would be
# dropped and a refused caller would wait out TCP's retries. The unit is ordered before
# Docker and the daemon, so the rule holds after a reboot before any workspace runs.
guard_unit="${LABLINK_SYSTEMD_DIR:-/etc/systemd/system}/lablink-imds-guard.service"
cat > "$guard_unit" <<'UNIT'
[Unit]
Description=LabLink: only root on this host reaches the instance metadata service
DefaultDependencies=no
After=local-fs.target
Wants=network-pre.target
Before=network-pre.target docker.service lablink-client.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'iptables -w -C OUTPUT -d 169.254.169.254/32 -p tcp -m owner ! --uid-owner 0 -j REJECT 2>/dev/null || iptables -w -I OUTPUT 1 -d 169.254.169.254/32 -p tcp -m owner ! --uid-owner 0 -j REJECT'

[Install]
WantedBy=multi-user.target docker.service
UNIT
systemctl daemon-reload
if ! systemctl enable --now lablink-imds-guard.service; then
  fail "cannot keep the workspace from the metadata service (lablink-imds-guard.service did not start)"
fi

# Docker's cgroup driver: cgroupfs, as NVIDIA documents against a `systemctl daemon-reload`
# cutting running containers off their GPU ("Failed to initialize NVML: Unknown Error";
# docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/troubleshooting.html).
# Merged into the image's daemon.json (the DLAMI's holds the NVIDIA runtime).
daemon_json="${LABLINK_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
if command -v dockerd >/dev/null 2>&1 || [ -e "$daemon_json" ]; then
  changed="$(python3 - "$daemon_json" <<'PY'
import json, os, sys
p = sys.argv[1]
try:
    with open(p) as f:
        cfg = json.load(f)
except FileNotFoundError:
    cfg = {}
opts = [o for o in cfg.get("exec-opts", []) if not o.startswith("native.cgroupdriver=")]
want = opts + ["native.cgroupdriver=cgroupfs"]
if cfg.get("exec-opts") != want:
    cfg["exec-opts"] = want
    os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    with open(p + ".lablink", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(p + ".lablink", p)
    print("changed")
PY
  )" || fail "cannot set Docker's cgroup driver in $daemon_json"
  if [ "$changed" = changed ]; then
    systemctl restart docker.service || fail "Docker did not restart with the cgroupfs driver"
  fi
fi

if ! command -v aws >/dev/null 2>&1; then
  fail "no aws command on the PATH: the VM image needs the AWS CLI to fetch the client daemon"
fi

fetch_start="$(date +%s)"
attempt=1
until aws s3 cp --only-show-errors --region "$LABLINK_AWS_REGION" \
    "s3://$LABLINK_DAEMON_BUCKET/$LABLINK_DAEMON_KEY" "$tmp"; do
  if [ "$attempt" -ge 8 ]; then
    fail "cannot fetch the client daemon from s3://$LABLINK_DAEMON_BUCKET/$LABLINK_DAEMON_KEY after $attempt attempts"
  fi
  sleep $((attempt * 5))
  attempt=$((attempt + 1))
done

if ! echo "$LABLINK_DAEMON_SHA256  $tmp" | sha256sum -c --status; then
  got="$(sha256sum "$tmp" | cut -d' ' -f1)"
  rm -f "$tmp"
  fail "the client daemon's SHA-256 is $got, expected $LABLINK_DAEMON_SHA256: refusing to run it"
fi
say "client daemon fetched and checked in $(( $(date +%s) - fetch_start )) s"
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
if ! systemctl enable --now lablink-client.service; then
  fail "the lablink-client service did not start (systemctl enable --now lablink-client.service failed)"
fi
say "client daemon verified and started"
