"""Benchmarks of the lab API server with fake node agents (figures printed, nothing asserted).

Run: .venv/bin/python bench/api_bench.py
Measures: creating and listing 1,000 pods (JSON and Table), 100 concurrent execs, and the
median round trip of one exec. Everything stays on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "api"))

from fake_agent import FakeAgent  # noqa: E402

from conftest import _nodes  # noqa: E402  (test fixtures' node set)
from netlab.api.server import ApiServer  # noqa: E402
from netlab.spec import LabSpec  # noqa: E402

PODS = 1_000
CONCURRENT_EXECS = 100
ROUND_TRIPS = 50
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
OVERALL_LIMIT = 120.0  # seconds: the whole run is bounded


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "yes"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
    }


async def exec_once(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext) -> int:
    query = "command=echo&command=hi&stdout=true&stderr=true"
    async with session.ws_connect(
        f"{url}/api/v1/namespaces/bench/pods/p-0/exec?{query}",
        protocols=("v5.channel.k8s.io",),
        ssl=ctx,
    ) as ws:
        status: dict[str, Any] = {}
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x03":
                status = json.loads(message.data[1:])
        return 0 if status.get("status") == "Success" else 1


async def run() -> None:
    state = Path(tempfile.mkdtemp(prefix="netlab-api-bench-"))  # the server's certificate
    spec = LabSpec(name="bench", nodes=3, state_root=state)
    server = ApiServer(spec)
    agents = [
        FakeAgent(info, server.pod_status_changed, server.record_event) for info in _nodes(spec)
    ]
    url = await server.start()
    for agent in agents:
        server.register_node(agent)
    ctx = ssl.create_default_context(cafile=str(server.ca_path))
    headers = {"Authorization": f"Bearer {server.token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            await (
                await session.post(
                    f"{url}/api/v1/namespaces", json={"metadata": {"name": "bench"}}, ssl=ctx
                )
            ).read()
            started = time.perf_counter()
            semaphore = asyncio.Semaphore(50)

            async def create(i: int) -> None:
                async with semaphore:
                    response = await session.post(
                        f"{url}/api/v1/namespaces/bench/pods", json=pod(f"p-{i}"), ssl=ctx
                    )
                    await response.read()
                    assert response.status == 201, response.status

            await asyncio.gather(*(create(i) for i in range(PODS)))
            created = time.perf_counter() - started
            print(
                f"create {PODS} pods (50 in flight): {created:.2f}s ({PODS / created:.0f} pods/s)"
            )

            for label, accept in (("JSON", "application/json"), ("Table", TABLE)):
                times = []
                for _ in range(5):
                    started = time.perf_counter()
                    response = await session.get(
                        f"{url}/api/v1/pods", headers={"Accept": accept}, ssl=ctx
                    )
                    body = await response.json()
                    times.append(time.perf_counter() - started)
                count = len(body.get("items", body.get("rows", [])))
                print(
                    f"list {count} pods as {label}: median {statistics.median(times) * 1000:.1f} ms (5 runs)"
                )

            started = time.perf_counter()
            results = await asyncio.gather(
                *(exec_once(session, url, ctx) for _ in range(CONCURRENT_EXECS))
            )
            elapsed = time.perf_counter() - started
            print(
                f"{CONCURRENT_EXECS} concurrent execs: {elapsed:.2f}s, {results.count(0)} succeeded"
            )

            trips = []
            for _ in range(ROUND_TRIPS):
                started = time.perf_counter()
                await exec_once(session, url, ctx)
                trips.append(time.perf_counter() - started)
            print(
                f"exec round trip (echo, sequential x{ROUND_TRIPS}): median {statistics.median(trips) * 1000:.1f} ms, "
                f"p90 {sorted(trips)[int(ROUND_TRIPS * 0.9)] * 1000:.1f} ms"
            )
    finally:
        await server.stop()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    asyncio.run(asyncio.wait_for(run(), OVERALL_LIMIT))


if __name__ == "__main__":
    main()
