#!/bin/sh
# The tests' workshop hook (client-image/hooks/ has the real ones), run by the client
# image's build as root from this directory: the stand-in for SLEAP's GUI entry point,
# whose process the daemon's in-use check looks for, and a set-uid root copy of `id`,
# with which the tests show that no-new-privileges keeps the desktop user from root.
set -eu
install -m 0755 sleap-label /usr/local/bin/sleap-label
install -m 4755 -o root -g root /usr/bin/id /usr/local/bin/suid-id
