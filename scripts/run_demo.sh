#!/usr/bin/env bash
# The live demo: player -> encoder -> decoder as three processes, measured per second
# (fps, kbit/s, compression ratio, RGB PSNR, depth RMSE, latency). Prepares .venv first
# (scripts/setup_venv.sh: fast when already done). DDS stays on this machine.
#
#   scripts/run_demo.sh                                  # synthetic room, classical codec, 20 s
#   scripts/run_demo.sh --codec-options 'color_quality=60' --duration 30
#   scripts/run_demo.sh --source /path/to/folder         # color/ + depth/ images (+ meta.json)
#   scripts/run_demo.sh --help
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
"$REPO/scripts/setup_venv.sh"
# Run from outside the checkout so the installed package (with its generated message) is used.
cd /
exec "$VENV/bin/rgbd-demo" "$@"
