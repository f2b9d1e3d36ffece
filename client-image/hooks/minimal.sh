#!/bin/sh
# The smallest workshop hook, and the default: it installs nothing, and shows the shape
# of one. A hook is a script in the client image's build context, run as root near the
# end of the build from its own directory (the files beside it are there too), after the
# desktop, the browser, Chrome Remote Desktop and the user `client` are in place; it is
# chosen with `scripts/build-client-image --hook FILE` (docs/deploy.md, "Client image").
#
# Put software under /opt or /usr/local and commands on PATH (/usr/local/bin): the
# desktop user's home is a volume on the VM, so files written to it here are seen only
# when that volume is new. Install Debian/Ubuntu packages with
#   apt-get update && apt-get install -y --no-install-recommends PACKAGE...
# (the build removes apt's lists afterwards). $LABLINK_DESKTOP_USER and
# $LABLINK_DESKTOP_HOME name the desktop user and its home.
set -eu
mkdir -p /usr/local/share/lablink
cat > /usr/local/share/lablink/workshop.txt <<TEXT
This desktop was built with the minimal workshop hook: no workshop software is installed.
The desktop user is $LABLINK_DESKTOP_USER (home $LABLINK_DESKTOP_HOME).
TEXT
