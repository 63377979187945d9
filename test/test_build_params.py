"""config/*.yaml and launch/*.launch.py fit the nodes they configure.

Each node is started as its own process with ``--ros-args --params-file`` and
asked over its real parameter services (list/get/describe) what it has: every
key of the YAML file must be declared and in force with the file's value.
A variant of each file with every number and flag changed (within the
declared ranges) proves the file is really applied, not just equal to the
defaults. The launch files cannot run here (no ``launch`` package), so they
are checked statically: valid Python, and every executable, node name and
config file they name exists.
"""
from __future__ import annotations

import ast
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
LAUNCH = REPO / "launch"

# yaml file -> (module that runs the node, the node's name)
NODES = {
    "encoder.yaml": ("rgbd_codec_ros.ros.encoder_node", "rgbd_encoder"),
    "decoder.yaml": ("rgbd_codec_ros.ros.decoder_node", "rgbd_decoder"),
}
EXECUTABLES = {"encoder_node", "decoder_node", "player_node", "link_emulator_node"}  # lib/rgbd_codec_ros (CMakeLists.txt)
#: nodes without a YAML file of their own (configured by launch arguments)
UNCONFIGURED = {"player_node", "link_emulator_node"}


def _yaml_params(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["/**"], f"{path.name}: expected one '/**' section"
    params = doc["/**"]["ros__parameters"]
    assert params, path.name
    return params


class ParamClient:
    """Real rcl_interfaces service calls to a running node."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("param_checker", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

    def call(self, node_name: str, srv_type, srv: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, f"/{node_name}/{srv}")
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"/{node_name}/{srv} never appeared"
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=timeout)
            assert future.done(), f"/{node_name}/{srv} did not answer within {timeout} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def parameters(self, node_name: str) -> tuple:
        from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters
        from rclpy.parameter import parameter_value_to_python

        names = list(self.call(node_name, ListParameters, "list_parameters",
                               ListParameters.Request()).result.names)
        values = self.call(node_name, GetParameters, "get_parameters",
                           GetParameters.Request(names=names)).values
        descs = self.call(node_name, DescribeParameters, "describe_parameters",
                          DescribeParameters.Request(names=names)).descriptors
        return ({n: parameter_value_to_python(v) for n, v in zip(names, values)},
                dict(zip(names, descs)))

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


@pytest.fixture(scope="module")
def param_client():
    client = ParamClient()
    yield client
    client.close()


def _start(module: str, params_file: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", "--params-file", str(params_file)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate(timeout=10)[0]


def _check_node(param_client, module, node_name, params_file, expected):
    proc = _start(module, params_file)
    try:
        deadline = time.monotonic() + 40
        while proc.poll() is None and time.monotonic() < deadline:
            names = [n for n, _ in param_client.node.get_node_names_and_namespaces()]
            if node_name in names:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"{module} exited {proc.returncode}:\n{_stop(proc)}"
        values, descs = param_client.parameters(node_name)
    finally:
        out = _stop(proc)
    missing = sorted(set(expected) - set(values))
    assert not missing, f"{params_file.name}: {node_name} does not declare {missing}\n{out}"
    for name, want in expected.items():
        got = values[name]
        if isinstance(want, float):
            assert isinstance(got, float) and math.isclose(got, want), (name, got, want, out)
        else:
            assert got == want and type(got) is type(want), (name, got, want, out)
    assert "has no such parameter" not in out, out
    assert "Traceback" not in out, out
    return descs


def _variant(value, desc):
    """A different value of the same type inside the declared range (strings stay as they are)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        rng = desc.integer_range[0] if desc.integer_range else None
        if rng is None or value + 1 <= rng.to_value:
            return value + 1
        return value - 1
    if isinstance(value, float):
        rng = desc.floating_point_range[0] if desc.floating_point_range else None
        lo, hi = (rng.from_value, rng.to_value) if rng else (-math.inf, math.inf)
        for cand in (value * 0.5, value * 2.0, (lo + hi) / 2 if rng else value + 1.0):
            if cand != value and lo <= cand <= hi:
                return cand
        pytest.fail(f"no alternative for {value} in [{lo}, {hi}]")
    return value


@pytest.mark.parametrize("yaml_name", sorted(NODES))
def test_yaml_parameters_declared_and_applied(yaml_name, param_client, tmp_path):
    module, node_name = NODES[yaml_name]
    shipped = _yaml_params(CONFIG / yaml_name)
    descs = _check_node(param_client, module, node_name, CONFIG / yaml_name, shipped)
    # Not just the defaults: a file with every number and flag changed is applied too.
    changed = {k: _variant(v, descs[k]) for k, v in shipped.items()}
    assert any(changed[k] != shipped[k] for k in shipped)
    variant = tmp_path / yaml_name
    variant.write_text(yaml.safe_dump({"/**": {"ros__parameters": changed}}))
    _check_node(param_client, module, node_name, variant, changed)


def test_every_yaml_file_is_covered():
    assert sorted(p.name for p in CONFIG.glob("*.yaml")) == sorted(NODES)


def _launch_nodes(path: Path):
    """(keyword arguments of every Node(...) call as source text, all string constants)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes, strings = [], set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Constant) and isinstance(item.value, str):
            strings.add(item.value)
        if isinstance(item, ast.Call) and getattr(item.func, "id", getattr(item.func, "attr", "")) == "Node":
            nodes.append({kw.arg: kw.value for kw in item.keywords})
    has_generate = any(isinstance(f, ast.FunctionDef) and f.name == "generate_launch_description"
                       for f in tree.body)
    return nodes, strings, has_generate


@pytest.mark.parametrize("launch_name", ["encoder.launch.py", "decoder.launch.py", "pipeline.launch.py"])
def test_launch_file_names_what_exists(launch_name):
    nodes, strings, has_generate = _launch_nodes(LAUNCH / launch_name)
    assert has_generate, f"{launch_name} has no generate_launch_description()"
    node_names = {name for _, name in NODES.values()}
    for node in nodes:
        assert isinstance(node.get("package"), ast.Constant) and node["package"].value == "rgbd_codec_ros"
        exe = node.get("executable")
        assert isinstance(exe, ast.Constant) and exe.value in EXECUTABLES, ast.dump(exe)
        name = node.get("name")
        if isinstance(name, ast.Constant) and exe.value not in UNCONFIGURED:
            assert name.value in node_names, name.value
    for s in strings:
        if s.endswith((".yaml", ".launch.py", ".xml")):
            assert (CONFIG / s).is_file() or (LAUNCH / s).is_file(), f"{launch_name} names missing {s}"
    if launch_name != "pipeline.launch.py":
        assert len(nodes) == 1
