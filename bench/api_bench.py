"""Benchmarks of the lab API server with fake node agents (figures printed, nothing asserted).

Run: .venv/bin/python bench/api_bench.py [--runs N] [--profile] [--skip-exec]  (--help)
Measures: creating and listing 1,000 pods (JSON and Table, whole pages and in pages of
--chunk), 100 concurrent execs, and the median round trip of one exec. A list's time is the
client's: request sent to body decoded (the standard library's json, as aiohttp's
response.json() decodes); the time until the last byte arrived is printed too. --profile prints cProfile's top functions over the
JSON lists in CPU time (server and client share one event loop, so both sides show). The
CPU-time figure is the steadier one on a busy machine. Everything stays on
127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import make_mocked_request

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the API tests' fake nodes

from fake_agent import FakeAgent  # noqa: E402
from live_api import fake_nodes  # noqa: E402

from netlab.api.request import Target  # noqa: E402
from netlab.api.server import ApiServer  # noqa: E402
from netlab.spec import LabSpec  # noqa: E402

PODS = 1_000
RUNS = 5
CHUNK = 500
CONCURRENT_EXECS = 100
ROUND_TRIPS = 50
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
OVERALL_LIMIT = 300.0  # seconds: the whole run is bounded (the machine may be shared and slow)


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


async def run(args: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="netlab-api-bench-"))  # the server's certificate
    # No ServiceAccount lag (the lab's default sa-delay): this measures lists and execs, and
    # its pods are created right after their namespace, as no real client would.
    spec = LabSpec(name="bench", nodes=3, state_root=state, api_faults=("sa-delay=0",))
    server = ApiServer(spec)
    agents = [
        FakeAgent(info, server.pod_status_changed, server.record_event) for info in fake_nodes(spec)
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

            received: list[float] = []  # per list request: sent -> last byte read
            cpu: list[float] = []  # per list request: this process's CPU time (both sides)

            async def timed_list(accept: str, query: str = "") -> tuple[float, Any]:
                cpu_started = time.process_time()
                started = time.perf_counter()
                response = await session.get(
                    f"{url}/api/v1/pods{query}", headers={"Accept": accept}, ssl=ctx
                )
                raw = await response.read()
                received.append(time.perf_counter() - started)
                body = json.loads(raw)  # what aiohttp's response.json() does
                elapsed = time.perf_counter() - started
                cpu.append(time.process_time() - cpu_started)
                return elapsed, body

            profiler = cProfile.Profile(time.process_time) if args.profile else None
            for label, accept in (("JSON", "application/json"), ("Table", TABLE)):
                times = []
                received.clear()
                cpu.clear()
                for _ in range(args.runs):
                    if profiler is not None and label == "JSON":
                        profiler.enable()
                    elapsed, body = await timed_list(accept)
                    if profiler is not None:
                        profiler.disable()
                    times.append(elapsed)
                count = len(body.get("items", body.get("rows", [])))
                print(f"list {count} pods as {label}: {summary(times)}")
                print(f"    of which until the last byte arrived: {summary(received)}")
                print(f"    CPU time (server and client, one process): {summary(cpu)}")

            # The list handler alone (no TLS, HTTP or client decoding): the server's own cost.
            for label, accept in (("JSON", "application/json"), ("Table", TABLE)):
                handler_times, handler_cpu = [], []
                for _ in range(args.runs):
                    request = make_mocked_request("GET", "/api/v1/pods", headers={"Accept": accept})
                    cpu_started = time.process_time()
                    started = time.perf_counter()
                    await server.rest.list_or_watch(request, Target("pods", None, None))
                    handler_times.append(time.perf_counter() - started)
                    handler_cpu.append(time.process_time() - cpu_started)
                print(f"list handler alone, {label}: {summary(handler_times)}")
                print(f"    CPU time: {summary(handler_cpu)}")

            times, pages, listed = [], 0, 0
            for _ in range(args.runs):
                elapsed_all, token = 0.0, ""
                while True:
                    query = f"?limit={args.chunk}" + (f"&continue={token}" if token else "")
                    elapsed, body = await timed_list("application/json", query)
                    elapsed_all += elapsed
                    pages, listed = pages + 1, listed + len(body["items"])
                    token = body["metadata"].get("continue", "")
                    if not token:
                        break
                times.append(elapsed_all)
            print(
                f"list {listed // args.runs} pods as JSON in pages of {args.chunk} "
                f"({pages // args.runs} pages): {summary(times)}"
            )
            if profiler is not None:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
                print(out.getvalue())
            if args.skip_exec:
                return

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


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (
        f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms "
        f"({len(ms)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="list requests per figure")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="page size of the paged list")
    parser.add_argument("--profile", action="store_true", help="cProfile the JSON lists")
    parser.add_argument("--skip-exec", action="store_true", help="lists only, no exec figures")
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(run(args), OVERALL_LIMIT))


if __name__ == "__main__":
    main()
