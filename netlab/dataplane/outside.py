"""The host outside every node: a namespace on the lab's fabric, like a machine on the nodes'
network that is not a node, running the suite's edge server.

- Namespace ``netlab-<lab>-outside``: ``eth0`` on the fabric bridge (a veth made inside the
  fabric namespace with its peer born in the outside namespace: no link ever touches the
  machine's root namespace), holding each fabric range's last address (`LabSpec.
  outside_addresses`). Nodes reach it on the fabric, as any host of their network. It has no
  route to a pod range: like a real host outside a cluster it answers pods only at the
  address their node masquerades them to (`netlab.dataplane.egress`).
- The edge server: the suite's probe agent, ``agent.py serve --edge-control ADDR:PORT
  --allow-connect NODES``, the same program and arguments the suite prints for users; TCP
  and UDP listeners on `EDGE_PORT`, the control listener on the next port, allowed to connect
  to the nodes' addresses only. Started by the lab daemon inside the namespace; its log is
  ``outside.log`` and its pid ``outside.pid`` in the lab's state directory (the sweep kills
  it by namespace too).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from conformance.probe_agent import AGENT_FILE
from conformance.probe_agent.client import send_requests
from netlab.dataplane.nsexec import (
    create_netns,
    in_netns_thread,
    netns_path,
    popen_in_netns,
    remove_netns,
    write_sysctls,
)
from netlab.dataplane.topology import (
    FABRIC_BRIDGE,
    NO_DAD_SYSCTLS,
    NODE_UPLINK,
    TopologyError,
    interface_index,
    node_addresses,
)
from netlab.spec import LabSpec

log = logging.getLogger(__name__)

#: The edge server's TCP and UDP listeners; its control listener is the port after.
EDGE_PORT = 18080
#: The outside host's port on the fabric bridge (node ports are named ``node-<i>``).
FABRIC_PORT = "outside"
SERVER_LOG = "outside.log"
SERVER_PID = "outside.pid"
SERVER_DIR = "outside"  # the server's control socket lives here, under the state dir
#: The lab file naming the outside host as the suite takes it (``--external-host`` values).
EXTERNAL_HOSTS_FILE = "external-hosts"
SERVER_READY_TIMEOUT = 20.0  # seconds for the edge server to answer after it started
SERVER_STOP_TIMEOUT = 5.0


def external_host_values(spec: LabSpec) -> list[str]:
    """The outside host as ``--external-host`` takes it: one value per family."""
    return [
        f"[{address}]:{EDGE_PORT}" if ":" in address else f"{address}:{EDGE_PORT}"
        for address in spec.outside_addresses
    ]


def edge_server_argv(spec: LabSpec, python: str = sys.executable) -> list[str]:
    """``python agent.py serve ...`` as the suite's `edge_server_command` prints it for users:
    listeners on `EDGE_PORT`, a control listener on each outside address at the port after,
    connections allowed to every node's addresses and nowhere else."""
    argv = [python, str(AGENT_FILE), "serve", "--tcp-port", str(EDGE_PORT)]
    argv += ["--udp-port", str(EDGE_PORT), "--socket", str(server_socket(spec))]
    for address in spec.outside_addresses:
        host = f"[{address}]" if ":" in address else address
        argv += ["--edge-control", f"{host}:{EDGE_PORT + 1}"]
    nodes = [address for plan in spec.node_plans() for address in node_addresses(plan)]
    return [*argv, "--allow-connect", ",".join(nodes)]


def server_socket(spec: LabSpec) -> Path:
    return spec.state_dir / SERVER_DIR / "agent.sock"


# --- the namespace -----------------------------------------------------------------------------


def build_outside(spec: LabSpec) -> None:
    """Create the outside namespace and plug it into the fabric (which must exist). All or
    nothing: on failure the namespace is removed again."""
    create_netns(spec.outside_netns)
    try:
        write_sysctls(spec.outside_netns, NO_DAD_SYSCTLS)
        in_netns_thread(spec.fabric_netns, lambda: _plug_into_fabric_here(spec))
        in_netns_thread(spec.outside_netns, lambda: _configure_here(spec))
    except BaseException:
        remove_netns(spec.outside_netns)
        raise
    log.info(
        "outside host %s: %s on the fabric", spec.outside_netns, ", ".join(spec.outside_addresses)
    )


def destroy_outside(spec: LabSpec) -> None:
    """Remove the outside namespace (its veth goes with it); safe when already gone."""
    remove_netns(spec.outside_netns)


def _plug_into_fabric_here(spec: LabSpec) -> None:
    """Runs on a thread inside the fabric namespace."""
    outside_fd = os.open(netns_path(spec.outside_netns), os.O_RDONLY)
    try:
        with IPRoute() as fabric:
            fabric.link(
                "add",
                ifname=FABRIC_PORT,
                kind="veth",
                peer={"ifname": NODE_UPLINK, "net_ns_fd": outside_fd},
            )
            port = interface_index(fabric, FABRIC_PORT)
            fabric.link("set", index=port, master=interface_index(fabric, FABRIC_BRIDGE))
            fabric.link("set", index=port, state="up")
    finally:
        os.close(outside_fd)


def _configure_here(spec: LabSpec) -> None:
    """Runs on a thread inside the outside namespace: loopback, and eth0 with its addresses
    (no DAD: usable at once). No route beyond the fabric."""
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    with IPRoute() as outside:
        outside.link("set", index=interface_index(outside, "lo"), state="up")
        uplink = interface_index(outside, NODE_UPLINK)
        fabrics = {4: spec.fabric_cidr, 6: spec.fabric_cidr_v6}
        for address in spec.outside_addresses:
            version = ipaddress.ip_address(address).version
            prefix = ipaddress.ip_network(fabrics[version]).prefixlen
            if version == 6:
                outside.addr(
                    "add", index=uplink, address=address, prefixlen=prefix, flags=IFA_F_NODAD
                )
            else:
                outside.addr("add", index=uplink, address=address, prefixlen=prefix)
        outside.link("set", index=uplink, state="up")


# --- the edge server ---------------------------------------------------------------------------


class EdgeServer:
    """The edge server in the outside namespace, as a context manager: started (and answering)
    on enter, stopped on exit. A server that does not answer in time is stopped and raised."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> EdgeServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        spec = self.spec
        server_socket(spec).parent.mkdir(parents=True, exist_ok=True)
        with (spec.state_dir / SERVER_LOG).open("ab") as log_file:
            self.process = popen_in_netns(
                spec.outside_netns,
                edge_server_argv(spec),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        (spec.state_dir / SERVER_PID).write_text(f"{self.process.pid}\n")
        answered = Retrying(
            stop=stop_after_delay(SERVER_READY_TIMEOUT),
            wait=wait_fixed(0.1),
            retry=retry_if_result(lambda ok: not ok),
            retry_error_callback=lambda state: False,
        )(self._answers)
        if not answered:
            tail = self._log_tail()
            self.stop()
            raise TopologyError(
                f"the edge server in {spec.outside_netns} did not answer within "
                f"{SERVER_READY_TIMEOUT:.0f} s: {tail}"
            )
        log.info("edge server in %s (pid %d)", spec.outside_netns, self.process.pid)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise TopologyError(
                f"the edge server exited with code {self.process.returncode}: {self._log_tail()}"
            )
        try:
            (info,) = send_requests(str(server_socket(self.spec)), [{"op": "info"}], 2.0)
        except (OSError, ValueError):
            return False
        return bool(info.get("ok")) and bool(info.get("edge"))

    def _log_tail(self) -> str:
        try:
            lines = (self.spec.state_dir / SERVER_LOG).read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SERVER_STOP_TIMEOUT)
