"""CNI for one node, invoked the way libcni (containerd, kubelet) does it.

Each node has one network config list ``netlab`` (bridge ``cni0`` with host-local IPAM over the
node's ranges, then portmap for hostPorts) and the loopback network for ``lo`` (containerd's
``cni-loopback``). Plugins always run *inside the node namespace* (``nsenter --net``), so the
bridge and the host-side veths land there and never in the machine's root namespace.

ADD runs the list's plugins in order, each getting the previous one's result as
``prevResult``; DEL runs them in reverse with the cached ADD result, as libcni does. The config
used for ADD is cached with the result, so DEL always releases the lease ADD took.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab.contract import JSONDict
from netlab.dataplane.nsexec import communicate_within, netns_path
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

CNI_VERSION = "1.0.0"  # the v1.1.1 plugins accept 0.1.0 .. 1.0.0
CNI_PATH = Path("/usr/lib/cni")
NETWORK_NAME = "netlab"
LOOPBACK_NETWORK_NAME = "cni-loopback"
BRIDGE_NAME = "cni0"
POD_IFNAME = "eth0"
PLUGIN_TIMEOUT = 30.0  # seconds for one plugin call (portmap runs iptables, may wait a lock)
DUPLICATE_IP_FAULT = "duplicate-pod-ip"
FAMILY_MISSING_FAULT = "family-missing-on-node"
FAMILY_MISSING_NODE = "node-2"  # whose IPAM forgets IPv6 under family-missing-on-node
NO_HAIRPIN_FAULT = "no-hairpin"
HOSTPORT_UNMAPPED_FAULT = "hostport-unmapped"
HOSTPORT_UNMAPPED_NODE = "node-2"  # whose network config lacks the portmap plugin
# A new sandbox on a container restart asks host-local for the old IPs (its ``ips`` capability).
SAME_IP_FAULT = "sandbox-reset-same-ip"


class CNIError(RuntimeError):
    """A CNI plugin failed; the message carries the plugin's error ``msg`` and ``details``."""


@dataclass(frozen=True)
class PortMapping:
    """One hostPort entry as CNI's ``portMappings`` capability takes it."""

    host_port: int
    container_port: int
    protocol: str = "tcp"  # lowercase, as libcni passes it
    host_ip: str = ""

    def as_runtime_config(self) -> JSONDict:
        entry: JSONDict = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.lower(),
        }
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry


def port_mappings_from_pod(pod: Mapping[str, Any]) -> list[PortMapping]:
    """The hostPort entries of every container of ``pod`` (as kubelet hands them to CNI)."""
    mappings = []
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            host_port = port.get("hostPort")
            if host_port:
                mappings.append(
                    PortMapping(
                        host_port=int(host_port),
                        container_port=int(port["containerPort"]),
                        protocol=str(port.get("protocol", "TCP")).lower(),
                        host_ip=str(port.get("hostIP", "")),
                    )
                )
    return mappings


@dataclass(frozen=True)
class RuntimeConf:
    """Whom a CNI call is for, as libcni's RuntimeConf: the container, the path of its network
    namespace and the interface; ``capability_args`` (such as ``portMappings``) reach the
    plugins that declare the capability, as ``runtimeConfig``."""

    container_id: str
    netns: str
    ifname: str
    capability_args: JSONDict = field(default_factory=dict)


@dataclass(frozen=True)
class CNIAttachment:
    """What ADD gave a sandbox: its addresses (CIDR notation) and the raw 1.0.0 result."""

    container_id: str
    netns: str  # path of the namespace the interface lives in
    ip_cidrs: tuple[str, ...]
    gateways: tuple[str, ...]
    result: JSONDict = field(repr=False)

    @property
    def ips(self) -> tuple[str, ...]:
        """The pod's addresses without prefix length, IPv4 first (kubelet's podIPs order)."""
        addresses = [ipaddress.ip_interface(cidr).ip for cidr in self.ip_cidrs]
        return tuple(str(a) for a in sorted(addresses, key=lambda a: a.version))


def _family_key(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).version


def handed_out_ranges(spec: LabSpec, plan: NodePlan, ipam_ranges: Sequence[str]) -> list[str]:
    """The ranges host-local hands out on ``plan``'s node: its IPAM ranges, except under
    ``family-missing-on-node``, where node-2's pods get IPv4 only (the node keeps both
    podCIDRs in the API and its routes, so only the pods miss a family)."""
    if FAMILY_MISSING_FAULT in spec.faults and plan.name == FAMILY_MISSING_NODE:
        return [cidr for cidr in ipam_ranges if _family_key(cidr) == 4]
    return list(ipam_ranges)


class NodeCNI:
    """The CNI of one node: builds its config lists and runs ADD/DEL inside the node netns."""

    def __init__(self, spec: LabSpec, plan: NodePlan, ipam_ranges: Sequence[str]) -> None:
        if not ipam_ranges:
            raise ValueError(f"node {plan.name} has no IPAM range")
        self.spec = spec
        self.plan = plan
        self.ipam_ranges = handed_out_ranges(spec, plan, ipam_ranges)
        self.state_dir = spec.state_dir / "cni" / plan.name
        self.data_dir = self.state_dir / "ipam"
        self.cache_dir = self.state_dir / "results"
        self.conf_dir = self.state_dir / "net.d"

    # --- configs (pure) ------------------------------------------------------------------------

    def network_config(self, *, data_dir: Path | None = None) -> JSONDict:
        """The ``netlab`` network config list (what would sit in /etc/cni/net.d): bridge
        (hairpin mode on the pods' ports, as kubelet's hairpin-veth asks, so a pod reaches
        itself through its Service) with host-local, then portmap chained for hostPorts
        (``runtimeConfig.portMappings``, as containerd passes them). ``no-hairpin`` turns
        hairpin mode off; ``hostport-unmapped`` leaves portmap out on node-2."""
        families: dict[int, list[str]] = {}
        for cidr in self.ipam_ranges:
            families.setdefault(_family_key(cidr), []).append(cidr)
        # One range set per family: a pod gets one address of each family (dual stack).
        range_sets = [[{"subnet": cidr} for cidr in cidrs] for _, cidrs in sorted(families.items())]
        default_routes = [{"dst": "0.0.0.0/0" if v == 4 else "::/0"} for v in sorted(families)]
        return {
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE_NAME,
                    "isGateway": True,
                    "hairpinMode": NO_HAIRPIN_FAULT not in self.spec.faults,
                    "ipMasq": False,  # the network model forbids SNAT between pods
                    "ipam": {
                        "type": "host-local",
                        "ranges": range_sets,
                        "routes": default_routes,
                        "dataDir": str(data_dir or self.data_dir),
                    },
                    # host-local takes runtimeConfig.ips: the addresses a sandbox asks for.
                    **(
                        {"capabilities": {"ips": True}} if SAME_IP_FAULT in self.spec.faults else {}
                    ),
                },
                *(
                    []
                    if HOSTPORT_UNMAPPED_FAULT in self.spec.faults
                    and self.plan.name == HOSTPORT_UNMAPPED_NODE
                    else [{"type": "portmap", "capabilities": {"portMappings": True}}]
                ),
            ],
        }

    @staticmethod
    def loopback_config() -> JSONDict:
        """containerd's loopback network, run with CNI_IFNAME=lo."""
        return {
            "cniVersion": CNI_VERSION,
            "name": LOOPBACK_NETWORK_NAME,
            "plugins": [{"type": "loopback"}],
        }

    def write_config_files(self) -> None:
        """Put the config lists where a person would look for them (``net.d`` of the node)."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "10-netlab.conflist").write_text(
            json.dumps(self.network_config(), indent=2) + "\n"
        )
        (self.conf_dir / "99-loopback.conflist").write_text(
            json.dumps(self.loopback_config(), indent=2) + "\n"
        )

    # --- invocation ----------------------------------------------------------------------------

    async def _invoke(
        self, plugin_conf: JSONDict, command: str, runtime_conf: RuntimeConf
    ) -> JSONDict:
        plugin = CNI_PATH / str(plugin_conf["type"])
        environment = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": runtime_conf.container_id,
            "CNI_NETNS": runtime_conf.netns,
            "CNI_IFNAME": runtime_conf.ifname,
            "CNI_PATH": str(CNI_PATH),
        }
        # Executed inside the node namespace: cni0 and host veths are made there, never in root.
        process = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--net={netns_path(self.plan.netns)}",
            "--",
            str(plugin),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            stdout, stderr = await communicate_within(
                process, PLUGIN_TIMEOUT, json.dumps(plugin_conf).encode()
            )
        except TimeoutError:
            raise CNIError(
                f"CNI {command} {plugin.name} for {runtime_conf.container_id} timed out after "
                f"{PLUGIN_TIMEOUT}s"
            ) from None
        if process.returncode != 0:
            raise CNIError(_plugin_failure(plugin.name, command, stdout, stderr))
        if not stdout.strip():
            return {}
        parsed: JSONDict = json.loads(stdout)
        return parsed

    @staticmethod
    def _plugin_conf(
        config_list: JSONDict,
        plugin: JSONDict,
        prev_result: JSONDict | None,
        runtime_config: JSONDict,
    ) -> JSONDict:
        """What libcni's buildOneConfig sends to one plugin of a list."""
        conf = dict(plugin)
        conf["name"] = config_list["name"]
        conf["cniVersion"] = config_list["cniVersion"]
        if prev_result is not None:
            conf["prevResult"] = prev_result
        # Only the capabilities a plugin declares are passed on, as libcni does.
        capabilities = plugin.get("capabilities", {})
        selected = {key: value for key, value in runtime_config.items() if capabilities.get(key)}
        if selected:
            conf["runtimeConfig"] = selected
        return conf

    async def _add_list(self, config_list: JSONDict, runtime_conf: RuntimeConf) -> JSONDict:
        """libcni's AddNetworkList: each plugin in order, each given the previous result."""
        result: JSONDict | None = None
        for plugin in config_list["plugins"]:
            conf = self._plugin_conf(config_list, plugin, result, runtime_conf.capability_args)
            result = await self._invoke(conf, "ADD", runtime_conf)
        return result or {}

    async def _del_list(
        self, config_list: JSONDict, runtime_conf: RuntimeConf, prev_result: JSONDict | None
    ) -> None:
        """libcni's DelNetworkList: each plugin in reverse order, all of them even when one
        fails."""
        errors: list[str] = []
        for plugin in reversed(config_list["plugins"]):
            conf = self._plugin_conf(config_list, plugin, prev_result, runtime_conf.capability_args)
            try:
                await self._invoke(conf, "DEL", runtime_conf)
            except CNIError as error:
                # Keep going: a later plugin (host-local via bridge) must still release the IP.
                errors.append(str(error))
        if errors:
            raise CNIError("; ".join(errors))

    def _cache_path(self, container_id: str) -> Path:
        return self.cache_dir / f"{container_id}.json"

    async def add(
        self,
        container_id: str,
        netns: str,
        *,
        port_mappings: Sequence[PortMapping] = (),
        ips: Sequence[str] = (),
    ) -> CNIAttachment:
        """Attach the namespace at path ``netns``: loopback up, then eth0 on cni0 with an IP
        (``ips``: these addresses, CIDR notation, asked of host-local; `SAME_IP_FAULT` only)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.data_dir
        if DUPLICATE_IP_FAULT in self.spec.faults:
            # The fault: IPAM state starts empty for every sandbox, so it hands out the same
            # first address again and again.
            data_dir = self.state_dir / "ipam-fresh" / container_id
        config_list = self.network_config(data_dir=data_dir)
        runtime_config: JSONDict = {"portMappings": [m.as_runtime_config() for m in port_mappings]}
        if ips:
            runtime_config["ips"] = list(ips)
        # Cached before ADD: a failed or interrupted ADD is undone with the same config.
        self._cache_path(container_id).write_text(
            json.dumps({"config": config_list, "runtimeConfig": runtime_config, "result": None})
        )
        # lo and eth0 are independent networks (containerd attaches them concurrently too).
        loopback = self._add_list(self.loopback_config(), RuntimeConf(container_id, netns, "lo"))
        network = self._add_list(
            config_list, RuntimeConf(container_id, netns, POD_IFNAME, runtime_config)
        )
        outcomes = await asyncio.gather(loopback, network, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            await asyncio.shield(self.delete(container_id, netns))
            raise failures[0]
        result = outcomes[1]
        assert isinstance(result, dict)
        self._cache_path(container_id).write_text(
            json.dumps({"config": config_list, "runtimeConfig": runtime_config, "result": result})
        )
        return parse_result(container_id, netns, result)

    async def delete(self, container_id: str, netns: str) -> None:
        """Detach (release the IP, remove the veth and hostPort rules). Idempotent: a sandbox
        never added, or already deleted, is fine."""
        cache = self._cache_path(container_id)
        try:
            cached: JSONDict = json.loads(cache.read_text())
        except FileNotFoundError:
            return
        except json.JSONDecodeError:
            cached = {"config": self.network_config(), "runtimeConfig": {}, "result": None}
        # The spec allows DEL with a missing netns; pass an empty path then, as libcni callers do.
        netns_arg = netns if Path(netns).exists() else ""
        network = RuntimeConf(
            container_id, netns_arg, POD_IFNAME, cached.get("runtimeConfig") or {}
        )
        await self._del_list(cached["config"], network, cached.get("result"))
        if netns_arg:
            await self._del_list(
                self.loopback_config(), RuntimeConf(container_id, netns_arg, "lo"), None
            )
        if DUPLICATE_IP_FAULT in self.spec.faults:
            shutil.rmtree(self.state_dir / "ipam-fresh" / container_id, ignore_errors=True)
        cache.unlink(missing_ok=True)

    def leases(self) -> list[str]:
        """Addresses host-local currently holds for this node (file names in its data dir)."""
        roots = [self.data_dir / NETWORK_NAME]
        fresh = self.state_dir / "ipam-fresh"
        if fresh.is_dir():
            roots += [entry / NETWORK_NAME for entry in fresh.iterdir()]
        found = []
        for root in roots:
            if not root.is_dir():
                continue
            for entry in root.iterdir():
                try:
                    ipaddress.ip_address(entry.name)
                except ValueError:
                    continue  # lock and last_reserved_ip files
                found.append(entry.name)
        return sorted(found)


def _plugin_failure(plugin: str, command: str, stdout: bytes, stderr: bytes) -> str:
    try:
        error = json.loads(stdout)
        message = f"{error.get('msg', '')} {error.get('details', '')}".strip()
    except (json.JSONDecodeError, AttributeError):
        message = (stderr or stdout).decode(errors="replace").strip()
    return f"CNI {command} {plugin} failed: {message or 'no output'}"


def parse_result(container_id: str, netns: str, result: Mapping[str, Any]) -> CNIAttachment:
    """The sandbox's addresses from a 1.0.0 result: IPs on interfaces inside the sandbox."""
    interfaces = result.get("interfaces") or []
    ip_cidrs: list[str] = []
    gateways: list[str] = []
    for entry in result.get("ips") or []:
        index = entry.get("interface")
        on_host = (
            index is not None
            and 0 <= index < len(interfaces)
            and not interfaces[index].get("sandbox")
        )
        if on_host:
            continue  # an address on the host side (the bridge), not the pod's
        ip_cidrs.append(str(entry["address"]))
        if entry.get("gateway"):
            gateways.append(str(entry["gateway"]))
    if not ip_cidrs:
        raise CNIError(f"CNI ADD for {container_id} returned no address: {dict(result)}")
    return CNIAttachment(
        container_id=container_id,
        netns=netns,
        ip_cidrs=tuple(ip_cidrs),
        gateways=tuple(gateways),
        result=dict(result),
    )
