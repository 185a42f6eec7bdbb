"""`netlab up / down / status / faults`: bad input is one line and leaves nothing; a lab comes
up, answers, and goes down leaving nothing, also after its daemon was SIGKILLed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netlab_commands import netlab

from netlab import cli
from netlab.dataplane.cleanup import lab_netns_names, process_alive
from netlab.dataplane.topology import Topology
from netlab.faults import FAULTS
from netlab.spec import STATE_ROOT, LabSpec

pytestmark = pytest.mark.needs_lab

CONTROL_PLANE_MODULES = ("netlab.api.server", "netlab.kubelet")
MISSING_CONTROL_PLANE = [
    name for name in CONTROL_PLANE_MODULES if importlib.util.find_spec(name) is None
]
needs_control_plane = pytest.mark.skipif(
    bool(MISSING_CONTROL_PLANE),
    reason=f"the lab daemon needs {', '.join(MISSING_CONTROL_PLANE)}, not written yet",
)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """cli.main in-process: (exit code, stdout, stderr); argparse exits count as codes."""
    try:
        code = cli.main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_nothing_of(lab: str, state_root: Path = STATE_ROOT) -> None:
    assert lab_netns_names(lab) == []
    assert not (state_root / lab).exists()


def assert_one_line_error(code: int, out: str, err: str, fragment: str) -> None:
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    assert fragment in err


def folder_of_links(folder: Path, targets: list[Path]) -> Path:
    """``folder``, made with a link to each of ``targets`` (by its name) and nothing else: a
    PATH or plugin folder that lacks the one tool a test takes away."""
    folder.mkdir()
    for target in targets:
        (folder / target.name).symlink_to(target)
    return folder


def assert_up_refused(
    capsys: pytest.CaptureFixture[str], lab: str, fragment: str, *options: str
) -> None:
    """`netlab up --name LAB OPTIONS` (in-process) fails in one line naming ``fragment`` and
    makes nothing of the lab."""
    code, out, err = run_main(capsys, "up", "--name", lab, *options)
    assert_one_line_error(code, out, err, fragment)
    assert_nothing_of(lab)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--nodes", "0"], "at least 1 node", id="zero-nodes"),
        pytest.param(["--nodes", "-2"], "at least 1 node", id="negative-nodes"),
        pytest.param(["--nodes", "many"], "invalid int value", id="nodes-not-a-number"),
        pytest.param(["--fault", "nope"], "unknown fault nope", id="unknown-fault"),
        pytest.param(
            ["--fault", "overlapping-pod-cidrs", "--nodes", "1"],
            "needs at least 2 nodes",
            id="fault-does-not-fit",
        ),
        pytest.param(
            ["--ip-family", "ipv5"],
            "argument --ip-family: invalid choice: 'ipv5'",
            id="bad-ip-family",
        ),
        pytest.param(["--ip-family"], "expected one argument", id="ip-family-without-value"),
    ],
)
def test_up_rejects_bad_input_in_one_line_and_makes_nothing(
    args: list[str], fragment: str, lab_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_up_refused(capsys, lab_name, fragment, *args)


@pytest.mark.parametrize("bad_name", ["Upper", "under_score", "-leading", "much-too-long-name", ""])
def test_up_rejects_bad_names(bad_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "up", f"--name={bad_name}")
    assert_one_line_error(code, out, err, "lab name")


def without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run as another user; what `up` then says."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    return "needs root"


def without_runc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A PATH with the other tools `up` looks for, but no runc."""
    found = [shutil.which(tool) for tool in ("nsenter", "iptables-restore", "nft")]
    assert all(found), found
    tools = folder_of_links(tmp_path / "bin", [Path(str(path)) for path in found])
    monkeypatch.setenv("PATH", str(tools))
    return "runc is not installed"


def without_cni_bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A CNI plugin folder with host-local and loopback, but no bridge."""
    kept = [cli.CNI_PLUGIN_DIR / plugin for plugin in ("host-local", "loopback")]
    plugins = folder_of_links(tmp_path / "cni", kept)
    monkeypatch.setattr(cli, "CNI_PLUGIN_DIR", plugins)
    return f"{plugins / 'bridge'} is missing"


@pytest.mark.parametrize(
    "take_away",
    [
        pytest.param(without_root, id="root"),
        pytest.param(without_runc, id="runc"),
        pytest.param(without_cni_bridge, id="cni-bridge-plugin"),
    ],
)
def test_up_needs_root_runc_and_the_cni_bridge_plugin(
    take_away: Callable[[Path, pytest.MonkeyPatch], str],
    lab_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without one of them, `up` refuses in one line naming it, and makes nothing."""
    assert_up_refused(capsys, lab_name, take_away(tmp_path, monkeypatch))


@pytest.fixture
def stand_in_daemon() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to name in a pid file, as if a lab daemon ran."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdin is not None:
            process.stdin.close()


def test_second_up_of_a_running_lab_is_refused_and_leaves_it_alone(
    lab_name: str,
    tmp_path: Path,
    stand_in_daemon: subprocess.Popen[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state_dir = tmp_path / lab_name
    state_dir.mkdir()
    (state_dir / "daemon.pid").write_text(f"{stand_in_daemon.pid}\n")
    code, out, err = run_main(capsys, "--state-root", str(tmp_path), "up", "--name", lab_name)
    assert_one_line_error(code, out, err, "already running")
    assert (state_dir / "daemon.pid").exists()
    assert process_alive(stand_in_daemon.pid)
    assert lab_netns_names(lab_name) == []


def test_up_refuses_to_overwrite_a_foreign_kubeconfig(
    lab_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "config"
    precious.write_text("mine")
    assert_up_refused(capsys, lab_name, "will not overwrite", "--kubeconfig", str(precious))
    assert precious.read_text() == "mine"


def test_bad_input_through_the_real_command_is_one_line(lab_name: str) -> None:
    result = netlab("up", "--name", lab_name, "--nodes", "0")
    assert_one_line_error(result.returncode, result.stdout, result.stderr, "at least 1 node")
    assert_nothing_of(lab_name)


# --- down, status, faults ------------------------------------------------------------------------


def test_down_without_a_lab_says_so_and_succeeds(
    lab_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "down", "--name", lab_name)
    assert code == 0
    assert f"no lab named {lab_name}" in err
    code, out, err = run_main(capsys, "down", "--name", lab_name, "--quiet")
    assert (code, out, err) == (0, "", "")


def test_down_removes_leftovers_of_a_dead_lab(
    lab_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = LabSpec(name=lab_name, nodes=2)
    Topology(spec).__enter__()  # deliberately never exited: a lab that died
    spec.state_dir.mkdir(parents=True)
    code, _out, err = run_main(capsys, "down", "--name", lab_name)
    assert code == 0
    assert "removed its leftovers" in err
    assert_nothing_of(lab_name)


def test_faults_lists_every_fault(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "faults")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(FAULTS)


def test_status_without_labs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(capsys, "--state-root", str(tmp_path), "status")
    assert code == 0
    assert "no labs" in err


def test_a_daemon_that_fails_late_leaves_nothing(lab_name: str) -> None:
    # /proc refuses the kubeconfig: the daemon fails after building (or, while the control plane
    # is missing, earlier); either way `up` reports it and nothing of the lab remains.
    result = netlab("up", "--name", lab_name, "--nodes", "2", "--kubeconfig", "/proc/netlab-kc")
    assert result.returncode != 0
    assert result.stdout == ""
    assert f"lab {lab_name} failed to start" in result.stderr
    assert_nothing_of(lab_name)


# --- a real lab ----------------------------------------------------------------------------------


@needs_control_plane
def test_up_status_down_round_trip(lab_name: str) -> None:
    started = time.monotonic()
    up = netlab("up", "--name", lab_name, "--nodes", "2")
    elapsed = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.splitlines()[-1])
    assert kubeconfig == STATE_ROOT / lab_name / "kubeconfig"
    assert kubeconfig.is_file()
    print(f"`netlab up` took {elapsed:.1f} s")  # a figure, not an assertion: shared machines
    try:
        status = netlab("status", "--name", lab_name)
        assert status.returncode == 0
        assert f"{lab_name}: running" in status.stdout
        assert "2 nodes" in status.stdout
        # The outside host and its edge server, as the suite's --external-host takes it.
        assert "run the suite with --external-host 172.18.255.254:18080" in up.stderr
        assert "outside host 172.18.255.254:18080," in status.stdout
        hosts = (STATE_ROOT / lab_name / "external-hosts").read_text()
        assert hosts == "172.18.255.254:18080\n"

        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        nodes = api.list_node().items
        assert sorted(node.metadata.name for node in nodes) == ["node-1", "node-2"]
        assert all(node.spec.pod_cidr for node in nodes)

        again = netlab("up", "--name", lab_name)
        assert_one_line_error(again.returncode, again.stdout, again.stderr, "already running")
    finally:
        down = netlab("down", "--name", lab_name)
    assert down.returncode == 0, down.stderr
    assert f"lab {lab_name} is down" in down.stderr
    assert_nothing_of(lab_name)


@needs_control_plane
def test_up_dual_stack_publishes_both_families_and_status_shows_it(lab_name: str) -> None:
    started = time.monotonic()
    up = netlab("up", "--name", lab_name, "--nodes", "2", "--ip-family", "dual")
    print(f"`netlab up --ip-family dual` (2 nodes) took {time.monotonic() - started:.1f} s")
    assert up.returncode == 0, up.stderr
    assert "2 nodes, dual" in up.stderr
    try:
        status = netlab("status", "--name", lab_name)
        assert "2 nodes, dual," in status.stdout, status.stdout
        info = json.loads((STATE_ROOT / lab_name / "info.json").read_text())
        assert info["ip_family"] == "dual"

        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(up.stdout.splitlines()[-1]))
        for node, plan in zip(
            sorted(api.list_node().items, key=lambda n: n.metadata.name),
            LabSpec(name=lab_name, nodes=2, ip_family="dual").node_plans(),
            strict=True,
        ):
            assert node.spec.pod_cidrs == list(plan.pod_cidrs), (
                f"{node.metadata.name}: podCIDRs {node.spec.pod_cidrs}, expected {plan.pod_cidrs}"
            )
            assert node.spec.pod_cidr == plan.pod_cidrs[0]
    finally:
        down = netlab("down", "--name", lab_name)
    assert down.returncode == 0, down.stderr
    assert_nothing_of(lab_name)


@needs_control_plane
def test_down_after_the_daemon_was_sigkilled_leaves_nothing(lab_name: str) -> None:
    up = netlab("up", "--name", lab_name, "--nodes", "2")
    assert up.returncode == 0, up.stderr
    info = json.loads((STATE_ROOT / lab_name / "info.json").read_text())
    os.kill(info["pid"], signal.SIGKILL)
    down = netlab("down", "--name", lab_name)
    assert down.returncode == 0, down.stderr
    assert_nothing_of(lab_name)
    assert not process_alive(info["pid"])
