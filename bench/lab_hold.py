"""Does a big lab hold? Boot N nodes, run M pods across them, report figures, tear down.

    .venv/bin/python bench/lab_hold.py --nodes 30 --pods 300

Prints `netlab up` time, pod create-to-Running median and p95 (all pods created at once, then
watched), the wall time until every pod ran, and the time to delete them all. Bounded: every
wait has a deadline, and the lab is torn down whatever happens.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client, config, watch


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def pod_manifest(index: int) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"hold-{index}", labels={"app": "hold"}),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(name="main", image="busybox", command=["sleep", "3600"])
            ],
            termination_grace_period_seconds=0,
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline for all pods")
    args = parser.parse_args()
    name = "hold" + secrets.token_hex(2)
    netlab = [sys.executable, "-m", "netlab"]
    started = time.monotonic()
    up = subprocess.run(
        [*netlab, "up", "--nodes", str(args.nodes), "--name", name],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    up_seconds = time.monotonic() - started
    try:
        if up.returncode != 0:
            print(f"netlab up failed: {up.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"netlab up, {args.nodes} nodes: {up_seconds:.2f} s")
        api = client.CoreV1Api(config.new_client_from_config(up.stdout.strip().splitlines()[-1]))
        created: dict[str, float] = {}
        running: dict[str, float] = {}
        stream = watch.Watch()
        begin = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            for index in range(args.pods):
                created[f"hold-{index}"] = time.monotonic()
                pool.submit(api.create_namespaced_pod, "default", pod_manifest(index))
        for event in stream.stream(
            api.list_namespaced_pod,
            "default",
            label_selector="app=hold",
            timeout_seconds=int(args.timeout),
        ):
            pod = event["object"]
            if pod.status.phase == "Running" and pod.metadata.name not in running:
                running[pod.metadata.name] = time.monotonic()
                if len(running) == args.pods:
                    stream.stop()
        all_running = time.monotonic() - begin
        if len(running) < args.pods:
            print(f"only {len(running)}/{args.pods} pods ran within {args.timeout:.0f} s")
            return 1
        starts = [running[pod] - created[pod] for pod in running]
        print(
            f"{args.pods} pods on {args.nodes} nodes: all Running after {all_running:.1f} s; "
            f"create-to-Running median {statistics.median(starts):.2f} s, "
            f"p95 {percentile(starts, 0.95):.2f} s"
        )
        begin = time.monotonic()
        api.delete_collection_namespaced_pod("default", label_selector="app=hold")
        print(f"deletecollection returned after {time.monotonic() - begin:.1f} s")
        return 0
    finally:
        begin = time.monotonic()
        subprocess.run(
            [*netlab, "down", "--name", name], capture_output=True, timeout=600, check=False
        )
        print(f"netlab down: {time.monotonic() - begin:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
