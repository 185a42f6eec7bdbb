"""Does a big lab hold? Boot N nodes, run M pods across them, report figures, tear down.

    .venv/bin/python bench/lab_hold.py --nodes 30 --pods 300

Prints `netlab up` time, pod create-to-Running median and p95 (the watch is opened before the
creates, so each pod's time is Running seen minus its own create sent), the wall time until
every pod was Ready, and the time to delete them all. Bounded: every wait has a deadline, and
the lab is torn down whatever happens.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pods import WaveError, delete_wave, plain_pod, run_wave
from bench.stats import Spread


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline for all pods")
    parser.add_argument("--name", default="hold" + secrets.token_hex(2), help="lab name")
    args = parser.parse_args()
    name = args.name
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
        api = client.CoreV1Api(config.new_client_from_config(up.stdout.strip().splitlines()[-1]))  # type: ignore[no-untyped-call]
        labels = {"app": "hold"}
        # Unpinned: the lab's scheduler spreads them, as it would a user's pods.
        pods = [plain_pod(f"hold-{i}", None, labels) for i in range(args.pods)]
        try:
            wave = run_wave(api, "default", pods, timeout=args.timeout)
        except WaveError as exc:
            print(str(exc))
            return 1
        starts = Spread.of(wave.start_seconds)
        print(
            f"{args.pods} pods on {args.nodes} nodes: all Ready after "
            f"{wave.all_ready_seconds:.1f} s; create-to-Running median {starts.median:.2f} s, "
            f"p95 {starts.p95:.2f} s"
        )
        deleted = delete_wave(
            api, "default", "app=hold", [f"hold-{i}" for i in range(args.pods)], timeout=300
        )
        print(f"all {args.pods} pods deleted after {deleted:.1f} s")
        return 0
    finally:
        begin = time.monotonic()
        subprocess.run(
            [*netlab, "down", "--name", name], capture_output=True, timeout=600, check=False
        )
        print(f"netlab down: {time.monotonic() - begin:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
