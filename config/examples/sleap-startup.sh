#!/bin/bash
# Runs once in each VM's workspace container, as root, after the tutorial repository is
# cloned (LABLINK_STARTUP_SCRIPT). LABLINK_DESKTOP_USER and LABLINK_DESKTOP_HOME name the
# participant's user. With "startup_on_error": "fail" a non-zero exit keeps the VM out
# of the pool; with "continue" it is only reported.
set -euo pipefail
desktop="$LABLINK_DESKTOP_HOME/Desktop"
# A shortcut to the tutorial data on the participant's desktop.
if [ -d "$desktop/sleap-tutorial-data" ]; then
  ln -sfn "$desktop/sleap-tutorial-data" "$desktop/Tutorial"
  chown -h "$LABLINK_DESKTOP_USER:" "$desktop/Tutorial"
fi
echo "workshop set-up done for $LABLINK_DESKTOP_USER"
