"""The two install routes produce a working package.

- venv route (scripts/setup_venv.sh): the message built with plain CMake into
  the venv prefix, the Python package pip-installed beside it; checked on the
  environment running these tests.
- ROS workspace route: `colcon build` of a copy of the package in a temporary
  workspace against the venv's ROS prefix, then `. install/local_setup.sh`,
  exactly what a user of a ROS 2 workspace does.

Each route must give an importable merged package (generated
``rgbd_codec_ros.msg`` next to the hand-written modules) and node executables
that start a real node and stop cleanly on Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS

REPO = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)
SITE = PREFIX / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"

IMPORT_CHECK = (
    "import rgbd_codec_ros, rgbd_codec_ros.codec, rgbd_codec_ros.convert, rgbd_codec_ros.msg\n"
    "from rgbd_codec_ros.msg import CompressedRGBD\n"
    "from rclpy.serialization import serialize_message, deserialize_message\n"
    "m = CompressedRGBD(codec='classical', payload=b'abc')\n"
    "assert deserialize_message(serialize_message(m), CompressedRGBD).payload.tobytes() == b'abc'\n"
    "assert CompressedRGBD.FORMAT_VERSION == rgbd_codec_ros.convert.FORMAT_VERSION\n"
    # the hand-written __init__ (with __version__) must win over the generated empty one
    "assert rgbd_codec_ros.__version__\n"
    "print(rgbd_codec_ros.__file__)\n"
    "print(rgbd_codec_ros.msg.__file__)\n"
)


def _run(cmd, env=None, cwd=None, timeout=600):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _wait_for_node_then_interrupt(cmd, env, name_part: str, timeout: float = 30.0) -> str:
    """Start ``cmd``, wait until a node whose name contains ``name_part`` is on the DDS
    graph (seen by an rclpy node here), then SIGINT it; returns its output. Asserts a
    clean exit (code 0) within 20 s."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    watcher = rclpy.create_node("build_route_watcher", context=ctx)
    proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline and proc.poll() is None:
            seen = [n for n, _ in watcher.get_node_names_and_namespaces()]
            if any(name_part in n for n in seen):
                break
            time.sleep(0.1)
        else:
            proc.kill()
            out = proc.communicate(timeout=10)[0]
            pytest.fail(f"{cmd[0]} did not appear on the graph within {timeout} s "
                        f"(exit {proc.returncode}; nodes seen {seen}); output:\n{out}")
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate(timeout=10)[0]
            pytest.fail(f"{cmd[0]} ignored Ctrl-C for 20 s; output:\n{out}")
        assert proc.returncode == 0, f"{cmd[0]} exited {proc.returncode} on Ctrl-C:\n{out}"
        assert "Traceback" not in out, out
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.destroy_node()
        rclpy.shutdown(context=ctx)


# --------------------------------------------------------------------------- venv route

def test_venv_route_installed_package():
    """What scripts/setup_venv.sh installed into this environment works outside the source tree."""
    for exe in ("encoder_node", "decoder_node", "rgbd_player_node", "link_emulator_node", "rgbd-codec", "rgbd-demo"):
        assert os.access(PREFIX / "bin" / exe, os.X_OK), f"{exe} missing: run scripts/setup_venv.sh"
    for exe in ("encoder_node", "decoder_node", "player_node", "link_emulator_node"):
        assert os.access(PREFIX / "lib" / "rgbd_codec_ros" / exe, os.X_OK), exe
    share = PREFIX / "share" / "rgbd_codec_ros"
    for rel in ("package.xml", "msg/CompressedRGBD.msg", "config/fastdds_localhost.xml"):
        assert (share / rel).is_file(), rel
    assert (PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "rgbd_codec_ros").is_file()
    # Run from / so the source checkout cannot shadow the installed package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = _run([sys.executable, "-c", IMPORT_CHECK], env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    pkg_file, msg_file = res.stdout.split()[-2:]
    assert pkg_file == str(SITE / "rgbd_codec_ros" / "__init__.py")
    assert msg_file == str(SITE / "rgbd_codec_ros" / "msg" / "__init__.py")
    res = _run([str(PREFIX / "bin" / "rgbd-codec"), "--help"], env=env, cwd="/")
    assert res.returncode == 0 and "rgbd-codec" in res.stdout, res.stderr


@pytest.mark.slow  # re-runs scripts/setup_venv.sh up to three times
@pytest.mark.skipif(PREFIX != REPO / ".venv", reason="tests run from another environment than <repo>/.venv")
def test_setup_venv_rerun_skips_finished_steps():
    """scripts/setup_venv.sh is idempotent: once it has run, a re-run redoes nothing."""
    script = REPO / "scripts" / "setup_venv.sh"
    steps = ("requirements up to date", "CompressedRGBD message up to date",
             "rgbd_codec_ros package up to date")
    # The first run brings the venv up to date if a file changed since it was made.
    # In a working tree that others edit meanwhile a source file may change
    # between two runs, so up to two more runs may reinstall before one must be
    # a no-op; in CI the second run already is.
    outputs = []
    for _ in range(3):
        res = _run(["bash", str(script)], cwd=REPO, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        outputs.append(res.stdout)
        if len(outputs) > 1 and all(step in res.stdout for step in steps):
            return
    pytest.fail("setup_venv.sh redid work on every re-run:\n" + "\n---\n".join(outputs))


def test_venv_route_node_executable_runs():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _wait_for_node_then_interrupt([str(PREFIX / "bin" / "decoder_node")], env, "decoder")


# --------------------------------------------------------------------------- colcon route

PACKAGE_FILES = ("CMakeLists.txt", "package.xml", "setup.py", "setup.cfg", "msg", "resource",
                 "rgbd_codec_ros", "launch", "config")


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = PREFIX / "bin" / "colcon"
    if not colcon.exists():
        pytest.fail("colcon is not installed in this environment: run scripts/setup_venv.sh")
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / "rgbd_codec_ros"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGE_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # A ROS user has sourced the underlay; here the underlay is the venv prefix.
    env.update(AMENT_PREFIX_PATH=str(PREFIX), CMAKE_PREFIX_PATH=str(PREFIX),
               PATH=f"{PREFIX / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(colcon), "build", "--base-paths", "src", "--build-base", "build",
           "--install-base", "install", "--event-handlers", "console_direct-",
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    if shutil.which("ninja", path=env["PATH"]):
        cmd += ["-G", "Ninja"]
    res = _run(cmd, env=env, cwd=ws, timeout=900)
    log = ws / "log" / "latest_build" / "rgbd_codec_ros" / "stdout_stderr.log"
    assert res.returncode == 0, (f"colcon build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}\n"
                                 + (log.read_text()[-4000:] if log.exists() else ""))
    install = ws / "install"
    # What `. install/local_setup.sh` gives a user's shell.
    res = _run(["sh", "-c", f". '{install}/local_setup.sh' && env -0"], env=env, cwd=ws)
    assert res.returncode == 0, res.stderr
    sourced = dict(item.split("=", 1) for item in res.stdout.split("\0") if "=" in item)
    yield install / "rgbd_codec_ros", sourced


@pytest.mark.slow
def test_colcon_route_layout(colcon_install):
    prefix, _ = colcon_install
    for exe in ("encoder_node", "decoder_node", "player_node", "link_emulator_node"):
        assert os.access(prefix / "lib" / "rgbd_codec_ros" / exe, os.X_OK), exe
    share = prefix / "share" / "rgbd_codec_ros"
    assert (share / "package.xml").is_file()
    assert (share / "msg" / "CompressedRGBD.msg").is_file()
    assert (share / "config" / "fastdds_localhost.xml").is_file()
    for rel in ("launch", "config"):
        shipped = sorted(p.name for p in (REPO / rel).iterdir() if p.is_file())
        installed = sorted(p.name for p in (share / rel).iterdir())
        assert installed == shipped, rel
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rgbd_codec_ros").is_file()


@pytest.mark.slow
def test_colcon_route_imports_merged_package(colcon_install):
    prefix, env = colcon_install
    res = _run([sys.executable, "-c", IMPORT_CHECK], env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    pkg_file, msg_file = res.stdout.split()[-2:]
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert pkg_file == str(site / "rgbd_codec_ros" / "__init__.py")
    assert msg_file == str(site / "rgbd_codec_ros" / "msg" / "__init__.py")


@pytest.mark.slow
def test_colcon_route_node_executable_runs(colcon_install):
    prefix, env = colcon_install
    _wait_for_node_then_interrupt([str(prefix / "lib" / "rgbd_codec_ros" / "decoder_node")], env,
                                  "decoder")
