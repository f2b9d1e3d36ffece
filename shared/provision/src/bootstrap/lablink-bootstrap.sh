#!/bin/sh
# LabLink VM bootstrap, run once by cloud-init (runcmd): fetch the client daemon the
# deployment shipped, with this VM's own role (aws s3 cp), check its SHA-256, install it
# and start it under systemd. Its settings are in /etc/lablink/bootstrap.env (root only);
# the daemon's in /etc/lablink/client.env. A failure here leaves the VM `initializing`
# until the server's bootstrap deadline marks it `error`; this script's output is in
# /var/log/cloud-init-output.log.
set -eu
env_file="${LABLINK_BOOTSTRAP_ENV:-/etc/lablink/bootstrap.env}"
. "$env_file"
dest="${LABLINK_DAEMON_PATH:-/usr/local/bin/lablink-client-daemon}"
tmp="$dest.download"
say() { echo "lablink-bootstrap: $*" >&2; }

attempt=1
until aws s3 cp --only-show-errors --region "$LABLINK_AWS_REGION" \
    "s3://$LABLINK_DAEMON_BUCKET/$LABLINK_DAEMON_KEY" "$tmp"; do
  if [ "$attempt" -ge 8 ]; then
    say "cannot fetch the client daemon from s3://$LABLINK_DAEMON_BUCKET/$LABLINK_DAEMON_KEY after $attempt attempts"
    exit 1
  fi
  sleep $((attempt * 5))
  attempt=$((attempt + 1))
done

if ! echo "$LABLINK_DAEMON_SHA256  $tmp" | sha256sum -c --status; then
  got="$(sha256sum "$tmp" | cut -d' ' -f1)"
  rm -f "$tmp"
  say "the client daemon's SHA-256 is $got, expected $LABLINK_DAEMON_SHA256: refusing to run it"
  exit 1
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
systemctl daemon-reload
systemctl enable --now lablink-client.service
say "client daemon verified and started"
