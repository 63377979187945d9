#!/usr/bin/env bash
# Prepare .venv (scripts/setup_venv.sh: fast when nothing changed), then run the
# test suite with DDS confined to this machine. Arguments go to pytest,
# e.g. scripts/run_tests.sh test/test_sync.py -x
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup_venv.sh

# DDS stays on this host, set by rgbd_codec_ros/ros/dds_env.py (the same code
# test/conftest.py and rgbd-demo use): Fast DDS with only the shared-memory
# transport (config/fastdds_localhost.xml), so no process opens a UDP or TCP
# socket, and a ROS_DOMAIN_ID of this run's own so parallel runs never meet.
# (conftest.py applies it again in every test process and its children.)
eval "$(.venv/bin/python - <<'PY'
import os, shlex
from rgbd_codec_ros.ros.dds_env import localhost_dds_env
env = localhost_dds_env()
for key in sorted(set(env) | set(os.environ)):
    if key not in env:
        print(f"unset {key}")
    elif os.environ.get(key) != env[key]:
        print(f"export {key}={shlex.quote(env[key])}")
PY
)"
echo "[run_tests] DDS: ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE" \
     "FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-(none)}"

# Several torch processes (test runner, nodes, CLI) share 2 cores: OpenMP threads
# that spin while waiting made training steps ~50x slower under such load here.
export OMP_WAIT_POLICY=PASSIVE

# A hung test must not hold CI for its whole time slot: SIGINT after 50 min
# lets pytest print what ran and what hung.
# No arguments: the whole suite. Arguments go to pytest as they are (paths,
# -k, -x, ...; with options only, setup.cfg's testpaths = test applies).
if [ $# -eq 0 ]; then
  # the whole suite (what CI runs): static checks first, configured in ruff.toml
  echo "[run_tests] ruff check"
  .venv/bin/ruff check .
  set -- test/
fi
exec timeout --signal=INT --kill-after=60 3000 .venv/bin/python -m pytest "$@"
