#!/bin/sh
# A workshop hook for SLEAP (https://sleap.ai), installed the way SLEAP's own docs install
# it on Linux (docs/installation.md of talmolab/sleap, 1.6): `uv tool install --python 3.13
# "sleap[nn]"` with PyTorch for CUDA, here into /opt/sleap with its commands (sleap,
# sleap-label, ...) in /usr/local/bin, so every user has them on PATH and the daemon's
# in-use check finds the `sleap-label` process.
#   scripts/build-client-image --hook client-image/hooks/sleap.sh
# NOT RUN where this was written (no PyPI wheels for torch nor GitHub there): it is
# exercised by .github/workflows/client-image.yml and release.yml on GitHub's runners.
#
# PyTorch's wheels bring their own CUDA libraries (SLEAP >= 1.5), so the base image needs
# no CUDA toolkit: the VM's NVIDIA driver, given to the workspace by the container
# toolkit, is enough (TORCH_BACKEND=cu128 needs driver 570 or newer; cu126 older ones).
set -eu
SLEAP_VERSION=1.6.6
UV_VERSION=0.13.10
TORCH_BACKEND=cu128

apt-get update
# uv from PyPI (pinned) in a venv of the system's Python; SLEAP's own Python is uv's.
# The rest is what Qt 6's xcb platform plugin (PySide6, the GUI) loads: libxcb-cursor0 is
# the one SLEAP's help names; ffmpeg's libraries are in SLEAP's wheels.
apt-get install -y --no-install-recommends \
  python3-venv libgl1 libegl1 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
  libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1
python3 -m venv /opt/uv
/opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==$UV_VERSION"

export UV_TOOL_DIR=/opt/sleap/tools UV_TOOL_BIN_DIR=/usr/local/bin \
  UV_PYTHON_INSTALL_DIR=/opt/sleap/python UV_PYTHON_PREFERENCE=only-managed \
  UV_CACHE_DIR=/tmp/uv-cache
/opt/uv/bin/uv tool install --python 3.13 "sleap[nn]==$SLEAP_VERSION" --torch-backend "$TORCH_BACKEND"
rm -rf /tmp/uv-cache

# The commands are there for every user, and SLEAP imports.
test -x /usr/local/bin/sleap-label
/opt/sleap/tools/sleap/bin/python -c 'import sleap; print("SLEAP", sleap.__version__)'
chmod -R a+rX /opt/sleap
