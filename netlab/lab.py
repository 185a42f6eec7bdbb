"""A running lab: topology, network faults, one kubelet per node and the API server, in one
asyncio process (the lab daemon).

``python -m netlab.lab --name X --nodes N [--ip-family F] [--fault F]... [--api-fault A]...
[--no-network-policy] --kubeconfig PATH``
runs in the foreground and logs to stderr. It writes ``<state>/daemon.pid`` at once, then
``<state>/ready`` (holding the kubeconfig path) when the API serves, or ``<state>/failed`` (one
line) and exits non-zero. SIGTERM or SIGINT tear everything down in reverse; a final sweep is
the safety net.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from netlab.dataplane.cleanup import sweep
from netlab.dataplane.egress import apply_egress
from netlab.dataplane.images import ImageStore
from netlab.dataplane.netfaults import apply_lab_faults
from netlab.dataplane.outside import (
    EXTERNAL_HOSTS_FILE,
    EdgeServer,
    build_outside,
    destroy_outside,
    external_host_values,
)
from netlab.dataplane.topology import (
    build_topology,
    check_topology_faults,
    destroy_topology,
    node_infos,
    plan_ipam_ranges,
)
from netlab.spec import (
    FAILED_FILE,
    INFO_FILE,
    KUBECONFIG_FILE,
    LOG_FILE,
    PID_FILE,
    READY_FILE,
    STATE_ROOT,
    LabSpec,
    LabSpecError,
)

if TYPE_CHECKING:
    from netlab.api.server import ApiServer
    from netlab.dataplane.proxy import ServiceProxy
    from netlab.dns import ClusterDNS
    from netlab.kubelet import Kubelet
    from netlab.netpol.engine import PolicyEngine

log = logging.getLogger("netlab.lab")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
KUBELET_CLOSE_TIMEOUT = 60.0  # seconds for one kubelet to stop its pods; the sweep follows anyway
API_STOP_TIMEOUT = 10.0


def default_kubeconfig(spec: LabSpec) -> Path:
    return spec.state_dir / KUBECONFIG_FILE


def write_atomically(path: Path, text: str) -> None:
    """Readers (the CLI polls) never see a half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


class Lab:
    """A lab's network, kubelets and API server; an async context manager.

    Entering sweeps leftovers of a lab of the same name, builds everything and serves; leaving
    (or a failure while entering) stops kubelets and their pods, stops the API, and removes the
    topology, in that order.
    """

    def __init__(self, spec: LabSpec, *, kubeconfig: Path | None = None) -> None:
        self.spec = spec
        self.kubeconfig = kubeconfig or default_kubeconfig(spec)
        self.api_url: str | None = None
        self.api: ApiServer | None = None
        self.kubelets: list[Kubelet] = []
        self.proxy: ServiceProxy | None = None
        self.dns: ClusterDNS | None = None
        self.policy_engine: PolicyEngine | None = None
        self._api_serving = False
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Lab:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        # Imported here: the daemon must be able to report a missing piece in its `failed` file.
        from netlab.api.server import ApiServer
        from netlab.kubelet import Kubelet

        spec = self.spec
        check_topology_faults(spec)
        spec.state_dir.mkdir(parents=True, exist_ok=True)

        # pyroute2's synchronous API runs its own event loop: keep it off this one.
        await asyncio.to_thread(build_topology, spec)  # all or nothing by itself
        self._stack.push_async_callback(asyncio.to_thread, destroy_topology, spec)
        await asyncio.to_thread(apply_lab_faults, spec)
        await asyncio.to_thread(apply_egress, spec)
        await asyncio.to_thread(build_outside, spec)
        self._stack.push_async_callback(asyncio.to_thread, destroy_outside, spec)
        edge_server = EdgeServer(spec)
        await asyncio.to_thread(edge_server.start)
        self._stack.push_async_callback(asyncio.to_thread, edge_server.stop)
        write_atomically(
            spec.state_dir / EXTERNAL_HOSTS_FILE,
            "".join(f"{v}\n" for v in external_host_values(spec)),
        )
        log.info(
            "network ready: %d nodes, %s, faults %s; outside host %s",
            spec.nodes,
            spec.ip_family,
            sorted(spec.faults) or "none",
            ", ".join(spec.outside_addresses),
        )

        images = ImageStore(spec.state_dir)
        self._stack.callback(images.close)
        for image in await asyncio.to_thread(images.import_archives, spec.images):
            log.info("image %s imported from its archive", ", ".join(image.names))

        self.api = ApiServer(spec)
        self._stack.push_async_callback(self._stop_control_plane)
        ranges = plan_ipam_ranges(spec)
        for plan, info in zip(spec.node_plans(), node_infos(spec), strict=True):
            kubelet = Kubelet(
                spec,
                plan,
                info,
                ipam_ranges=ranges[plan.name],
                on_status=self.api.pod_status_changed,
                on_event=self.api.record_event,
                configmaps=self.api.configmap_data,
                services=self.api.services_in,
                images=images.lookup,
            )
            self.kubelets.append(kubelet)  # closed on teardown even if start fails half-way
            await kubelet.start()
            self.api.register_node(kubelet)
        log.info("kubelets started: %s", ", ".join(k.node.name for k in self.kubelets))

        self.api_url = await self.api.start()
        self._api_serving = True
        await self._start_services()
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self._stack.callback(self.kubeconfig.unlink, missing_ok=True)  # also a partial one
        self.api.write_kubeconfig(self.kubeconfig)
        log.info("API serving at %s; kubeconfig %s", self.api_url, self.kubeconfig)

    async def _start_services(self) -> None:
        """The Service data plane: kube-proxy rules on every node, following Services and
        EndpointSlices, and the cluster DNS behind kube-system/kube-dns (another name under
        ``dns-service-renamed``; none at all under ``no-cluster-dns``)."""
        from netlab.dataplane.proxy import ServiceProxy
        from netlab.dns import (
            ClusterDNS,
            dns_service_name,
            kube_dns_endpoint_slice,
            kube_dns_service,
        )
        from netlab.kubelet.containers import NO_CLUSTER_DNS_FAULT, cluster_dns_address

        assert self.api is not None
        api = self.api
        proxy = ServiceProxy(self.spec, api.services_and_slices)
        await proxy.start()
        self.proxy = proxy
        self._stack.push_async_callback(proxy.stop)
        api.control.follow(("services", "endpointslices"), proxy.notify)
        first = self.kubelets[0]
        if NO_CLUSTER_DNS_FAULT in self.spec.faults:
            log.info("services: proxy on %d nodes, no cluster DNS", len(self.kubelets))
            dns_addresses: tuple[str, ...] = ()
        else:
            dns = ClusterDNS(self.spec, first.cni, first.node.name, api.services_and_slices)
            addresses = await dns.start()
            self.dns = dns
            self._stack.push_async_callback(dns.stop)
            api.control.follow(("services", "endpointslices"), dns.refresh)
            name = dns_service_name(self.spec)
            api.control.publish("services", kube_dns_service(cluster_dns_address(self.spec), name))
            api.control.publish(
                "endpointslices", kube_dns_endpoint_slice(addresses[0], first.node.name, name)
            )
            log.info(
                "services: proxy on %d nodes, cluster DNS at %s behind kube-system/%s",
                len(self.kubelets),
                addresses[0],
                name,
            )
            dns_addresses = dns.addresses
        if self.spec.network_policy:
            await self._start_network_policy(dns_addresses, first.node.name)

    async def _start_network_policy(self, dns_addresses: tuple[str, ...], dns_node: str) -> None:
        """The NetworkPolicy engine on every node, following policies, pods and namespaces;
        the cluster DNS (when the lab runs one) stands for a kube-system pod labelled
        ``k8s-app: kube-dns`` (so policies that allow DNS by selector allow it here too)."""
        from netlab.netpol.engine import PolicyEngine
        from netlab.netpol.model import Workload

        assert self.api is not None
        store = self.api.store
        dns = Workload(
            namespace="kube-system",
            name="coredns-netlab",
            labels=(("k8s-app", "kube-dns"),),
            ips=dns_addresses,
            node=dns_node,
        )
        workloads = (dns,) if dns_addresses else ()
        engine = PolicyEngine(
            self.spec,
            lambda: (
                store.list("networkpolicies"),
                store.list("pods"),
                store.list("namespaces"),
            ),
            lambda: workloads,
        )
        await engine.start()
        self.policy_engine = engine
        self._stack.push_async_callback(engine.stop)
        self.api.control.follow(("networkpolicies", "pods", "namespaces"), engine.notify)
        log.info("network policy: enforced on %d nodes (nftables)", len(self.kubelets))

    async def _stop_control_plane(self) -> None:
        """Kubelets stop their pods first (while the API can still take their reports), then
        the API stops; each step runs even if an earlier one failed."""
        try:
            for kubelet in reversed(self.kubelets):
                try:
                    async with asyncio.timeout(KUBELET_CLOSE_TIMEOUT):
                        await kubelet.close()
                except (TimeoutError, OSError, RuntimeError) as error:
                    # Reported, not fatal: the sweep after teardown removes what it left.
                    log.error("kubelet %s did not close cleanly: %s", kubelet.node.name, error)
        finally:
            if self.api is not None and self._api_serving:
                async with asyncio.timeout(API_STOP_TIMEOUT):
                    await self.api.stop()


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


async def run_lab(spec: LabSpec, kubeconfig: Path) -> int:
    """The daemon's life: start, report ready or failed, serve until SIGTERM/SIGINT, tear down.
    Returns the process exit code."""
    state_dir = spec.state_dir
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop(signal_name: str) -> None:
        log.info("lab %s: %s received", spec.name, signal_name)
        stop_requested.set()

    def request_stop(signal_number: int, _frame: object) -> None:
        # Only hand over to the loop: a signal handler must not log or take locks itself.
        loop.call_soon_threadsafe(stop, signal.Signals(signal_number).name)

    # Plain handlers, not loop.add_signal_handler: that one wakes the loop through a pipe that
    # forked children (pyroute2, CNI helpers) inherit, so a signal sent to such a child would
    # read as a stop request here.
    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    failure: str | None = None
    log.info("lab %s starting (pid %d)", spec.name, os.getpid())
    try:
        # Leftovers of a same-named lab.
        await asyncio.to_thread(sweep, spec.name, spec.state_root, keep=(LOG_FILE,))
        state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(state_dir / PID_FILE, f"{os.getpid()}\n")
        async with Lab(spec, kubeconfig=kubeconfig) as lab:
            info = {
                "name": spec.name,
                "nodes": spec.nodes,
                "ip_family": spec.ip_family,
                "faults": sorted(spec.faults),
                "api_faults": list(spec.api_faults),  # as started; `netlab api-faults` has now
                "images": [str(path) for path in spec.images],
                "network_policy": spec.network_policy,
                "api_url": lab.api_url,
                "kubeconfig": str(kubeconfig),
                "pid": os.getpid(),
                # The outside host's edge server, as the suite's --external-host takes it.
                "external_hosts": external_host_values(spec),
            }
            write_atomically(state_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")
            write_atomically(state_dir / READY_FILE, f"{kubeconfig}\n")
            log.info("lab %s ready", spec.name)
            await stop_requested.wait()
            log.info("lab %s stopping", spec.name)
    except Exception as error:  # any start-up failure becomes the one-line `failed` report
        log.exception("lab %s failed", spec.name)
        failure = one_line(error)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if failure is not None:
        sweep(spec.name, spec.state_root, keep=(LOG_FILE,))
        state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(state_dir / FAILED_FILE, failure + "\n")
        return 1
    report = sweep(spec.name, spec.state_root)  # safety net; normally finds only files
    log.info("lab %s down (%s)", spec.name, report.summary())
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m netlab.lab", description=__doc__)
    parser.add_argument("--name", default="default")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--ip-family", default="ipv4")
    parser.add_argument("--fault", action="append", default=[])
    parser.add_argument("--api-fault", action="append", default=[])
    parser.add_argument("--image", action="append", default=[], type=Path)
    parser.add_argument("--no-network-policy", action="store_true")
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--state-root", type=Path, default=STATE_ROOT, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        spec = LabSpec(
            name=args.name,
            nodes=args.nodes,
            ip_family=args.ip_family,
            faults=frozenset(args.fault),
            api_faults=tuple(args.api_fault),
            network_policy=not args.no_network_policy,
            state_root=args.state_root,
            images=tuple(path.absolute() for path in args.image),
        )
        check_topology_faults(spec)
    except LabSpecError as error:
        print(f"netlab.lab: {error}", file=sys.stderr)
        return 2
    return asyncio.run(run_lab(spec, args.kubeconfig or default_kubeconfig(spec)))


if __name__ == "__main__":
    raise SystemExit(main())
