"""start()/stop(): a stop ends open watches and exec sessions (killing their processes)."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import aiohttp
from fake_agent import FakeAgent
from live_api import fake_nodes

from netlab.api.server import ApiServer
from netlab.spec import LabSpec


async def _stop_with_open_streams(state_root: Path) -> tuple[float, int]:
    spec = LabSpec(name="stop", nodes=1, state_root=state_root)
    server = ApiServer(spec)
    agent = FakeAgent(fake_nodes(spec)[0], server.pod_status_changed, server.record_event)
    server.register_node(agent)
    url = await server.start()
    ctx = ssl.create_default_context(cafile=str(server.ca_path))
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {server.token}"}
    ) as session:
        created = await session.post(f"{url}/api/v1/namespaces/default/pods", json=pod, ssl=ctx)
        assert created.status == 201
        watch = await session.get(f"{url}/api/v1/pods?watch=1", ssl=ctx)
        async for line in watch.content:  # Running means the agent has the pod
            if b'"Running"' in line:
                break
        ws = await session.ws_connect(
            f"{url}/api/v1/namespaces/default/pods/p/exec?command=sleep&command=60&stdout=true",
            protocols=("v5.channel.k8s.io",),
            ssl=ctx,
        )
        assert ws.protocol == "v5.channel.k8s.io"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(server.stop(), 10)
        took = loop.time() - started
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        )
        return took, _our_sleepers()


def _our_sleepers() -> int:
    """Children of this process still running `sleep 60` (the exec's command)."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and cmdline == b"sleep\x0060\x00":
            count += 1
    return count


def test_stop_ends_streams_promptly(tmp_path: Path) -> None:
    took, sleepers = asyncio.run(_stop_with_open_streams(tmp_path))
    # A figure, not an assertion (shared machines); the stop itself is bounded by wait_for.
    print(f"stop with an open watch and exec took {took:.2f} s")
    assert sleepers == 0
    assert not (tmp_path / "stop" / "apiserver-tls").exists()  # the certificate went with it
