#!/usr/bin/env bash
# Install udcguard into .venv (idempotent): Debian packages when apt is there, then the
# pinned Python stack. CPU machines get the torch 2.13.0 CPU wheel; GPU workers the CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
APT_PACKAGES="git blender-data mate-backgrounds"   # blender-data: eight CC0 HDRI Haven panoramas (EXR);
                                                # mate-backgrounds: twelve nature photographs (JPEG)

if command -v apt-get >/dev/null 2>&1 && [ "${UDCGUARD_SKIP_APT:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends $missing >/dev/null \
      || { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends $missing >/dev/null; } \
      || echo "setup: warning: could not install$missing (their scenes will be skipped: scenes.panoramas/wallpapers=auto)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "setup: error: '$PY -m venv' failed (Debian/Ubuntu: apt-get install python3.11-venv)" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade "pip>=26"
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[dev,s3,dask]"
echo "setup: done ($(.venv/bin/python -c 'import torch, udcguard; print("torch", torch.__version__, "udcguard", udcguard.__version__)'))"
