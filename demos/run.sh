#!/usr/bin/env bash
# Set up and play the arena demo:   bash demos/run.sh [demo options]
# Installs what pyglet needs (apt: GL/GLU, and Xvfb when there is no display),
# pip-installs peng3dnet with the game extras, then runs python3 -m demos.arena.
# Without a display the game runs under Xvfb for 20 s and saves a screenshot
# outside the repository (/tmp/peng3dnet-arena.png, or $ARENA_SCREENSHOT).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs="libgl1 libglu1-mesa libgl1-mesa-dri fontconfig fonts-dejavu-core"
[ -z "${DISPLAY:-}" ] && pkgs="$pkgs xvfb xauth"
python3 -m pip --version >/dev/null 2>&1 || pkgs="$pkgs python3-pip"  # (a bare system python3)
# A Debian/Ubuntu python3 refuses pip installs outside a virtualenv (PEP 668);
# this installs into whatever python3 is first on the PATH, as the README says.
export PIP_BREAK_SYSTEM_PACKAGES=1
missing=""
if command -v dpkg >/dev/null 2>&1; then
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
fi
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

python3 -m pip install -q --disable-pip-version-check -e '.[game]'

if [ -n "${DISPLAY:-}" ]; then
  exec python3 -m demos.arena "$@"
fi
shot="${ARENA_SCREENSHOT:-${TMPDIR:-/tmp}/peng3dnet-arena.png}"
echo "no display: running under Xvfb for 20 s, screenshot in $shot"
exec xvfb-run -a -s '-screen 0 1024x768x24' python3 -m demos.arena --duration 20 --screenshot "$shot" "$@"
