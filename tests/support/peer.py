"""The upstream network e2e tests as a peer of our own tests: ``netpeer.test`` (upstream
v1.28.4's [sig-network] Networking Granular Checks and the Netpol suite, one ginkgo binary)
and ``agnhost``, from the tarball the genuine-cluster fixture ships at ``../shared/realk8s/``.

``unpack_peer`` checks the tarball against the fixture's SHA256SUMS and unpacks it;
``agnhost_archive`` packs ``/agnhost`` as the image the upstream tests run
(``registry.k8s.io/e2e-test-images/agnhost:2.45``, Entrypoint ``/agnhost``, Cmd ``pause``) with
the fixture's own ``mkimage.py``, for ``netlab up --image``; ``run_peer`` runs specs chosen by
ginkgo focus and skip regexes, bounded in time, and reads each spec's outcome from ginkgo's
JUnit report.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
# Where the fixture is: ``../shared/realk8s`` beside the repository (as CI lays it out), or
# $NETCONFORM_REALK8S (a git worktree elsewhere).
REALK8S = Path(os.environ.get("NETCONFORM_REALK8S") or REPOSITORY.parent / "shared" / "realk8s")
PEER_TARBALL = "upstream-e2e-network-v1.28.4-linux-amd64.tar.xz"
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
# The genuine cluster's run of the pod Granular Checks (realk8s/README.md).
GRANULAR_POD_CHECKS = (
    "Granular Checks: Pods should function for (intra-pod|node-pod) communication: (http|udp)"
)
# client-go 1.28 sends protobuf by default; the lab decodes JSON and YAML only (and answers a
# protobuf body with 415, from which client-go does not fall back: that is for CBOR only).
JSON_CONTENT = "--kube-api-content-type=application/json"


# Characters with a meaning in Go's RE2 syntax (ginkgo's --ginkgo.focus and --ginkgo.skip).
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def focus_regex(names: Iterable[str]) -> str:
    """A ginkgo focus matching the specs of these full names (as the JUnit report gives them),
    each written literally."""
    escaped = ("".join("\\" + c if c in _RE2_SPECIAL else c for c in name) for name in names)
    return "|".join(sorted(escaped))


class PeerError(RuntimeError):
    """The peer could not be unpacked, packed or run; the message says which step and why."""


@dataclass(frozen=True)
class Peer:
    """The unpacked binaries."""

    netpeer: Path
    agnhost: Path


@dataclass(frozen=True)
class SpecResult:
    """One ginkgo spec from the JUnit report: its full name and state (passed, failed,
    skipped, pending, panicked, interrupted, timedout), with the failure text if any."""

    name: str
    state: str
    seconds: float
    failure: str = ""


@dataclass(frozen=True)
class PeerRun:
    """One run of ``netpeer.test``: exit code, wall time, output and the specs it reported."""

    returncode: int
    seconds: float
    output: str
    specs: tuple[SpecResult, ...] = field(default_factory=tuple)

    def ran(self) -> list[SpecResult]:
        """The specs that ran (neither skipped nor pending)."""
        return [spec for spec in self.specs if spec.state not in ("skipped", "pending")]

    def summary(self) -> str:
        lines = [f"netpeer.test exit {self.returncode} after {self.seconds:.0f} s"]
        lines += [f"  {spec.state}: {spec.name} ({spec.seconds:.0f} s)" for spec in self.ran()]
        for spec in self.ran():
            if spec.failure:
                lines.append(f"--- {spec.name}:\n{spec.failure[-2000:]}")
        if not self.ran():
            lines.append("no spec ran; the end of its output:\n" + self.output[-3000:])
        return "\n".join(lines)


def peer_tarball(realk8s: Path = REALK8S) -> Path | None:
    """The fixture's tarball, or None where the fixture is not beside the repository."""
    path = realk8s / PEER_TARBALL
    return path if path.is_file() else None


def peer_tarball_or_skip() -> Path:
    """The fixture's tarball; where it is absent, the calling test module skips, saying where
    it looked and how to point at the fixture."""
    import pytest

    tarball = peer_tarball()
    if tarball is None:
        pytest.skip(
            f"the upstream network e2e peer is not at {REALK8S / PEER_TARBALL} "
            "(the genuine-cluster fixture; set NETCONFORM_REALK8S to its directory)",
            allow_module_level=True,
        )
    return tarball


def _expected_sha256(realk8s: Path, name: str) -> str:
    for line in (realk8s / "SHA256SUMS").read_text().splitlines():
        digest, _, listed = line.partition("  ")
        if listed.strip() == name:
            return digest.strip()
    raise PeerError(f"{realk8s / 'SHA256SUMS'} lists no {name}")


def _run_tool(argv: Sequence[str], what: str) -> None:
    """Run a local tool (bounded in time); `PeerError` with the end of its stderr if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise PeerError(f"{what}: {done.stderr.strip()[-2000:]}")


def unpack_peer(tarball: Path, destination: Path) -> Peer:
    """Check ``tarball`` against the fixture's SHA256SUMS and unpack it into ``destination``."""
    sha256 = hashlib.sha256()
    with tarball.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
    expected = _expected_sha256(tarball.parent, tarball.name)
    if sha256.hexdigest() != expected:
        raise PeerError(f"{tarball}: sha256 {sha256.hexdigest()}, SHA256SUMS says {expected}")
    destination.mkdir(parents=True, exist_ok=True)
    _run_tool(["tar", "-xJf", str(tarball), "-C", str(destination)], f"tar -xJf {tarball}")
    peer = Peer(destination / "netpeer.test", destination / "agnhost")
    for binary in (peer.netpeer, peer.agnhost):
        if not os.access(binary, os.X_OK):
            raise PeerError(f"{tarball} holds no executable {binary.name}")
    return peer


def agnhost_archive(peer: Peer, workdir: Path, realk8s: Path = REALK8S) -> Path:
    """An OCI archive of the agnhost image holding only ``/agnhost`` (the lab's containers see
    the host's other files: curl, nc), written by the fixture's ``mkimage.py``."""
    root = workdir / "agnhost-root"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(peer.agnhost, root / "agnhost")
    archive = workdir / "agnhost.tar"
    _run_tool(
        [
            sys.executable,
            str(realk8s / "mkimage.py"),
            str(root),
            AGNHOST_IMAGE,
            str(archive),
            "--entrypoint",
            '["/agnhost"]',
            "--cmd",
            '["pause"]',
        ],
        "mkimage.py",
    )
    return archive


def run_peer(
    peer: Peer,
    kubeconfig: Path,
    report_dir: Path,
    *,
    focus: str,
    skip: str | None = None,
    timeout: float = 600,
    extra: Sequence[str] = (JSON_CONTENT,),
) -> PeerRun:
    """Run the specs matching ``focus`` (and not ``skip``) against ``kubeconfig``. ginkgo gets
    ``timeout`` as its own suite timeout and a grace period; past both the process group is
    killed, so a hung peer never outlives the test."""
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / "junit.xml"
    junit.unlink(missing_ok=True)
    argv = [
        str(peer.netpeer),
        f"--kubeconfig={kubeconfig}",
        "--provider=local",
        f"--ginkgo.focus={focus}",
        f"--ginkgo.timeout={int(timeout)}s",
        "--ginkgo.grace-period=10s",
        "--ginkgo.no-color",
        f"--ginkgo.junit-report={junit}",
        *extra,
    ]
    if skip:
        argv.append(f"--ginkgo.skip={skip}")
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=report_dir,  # ginkgo writes nothing else, but never into the repository
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[killed after {timeout + 60:.0f} s]"
    seconds = time.monotonic() - started
    specs = read_junit(junit) if junit.exists() else ()
    (report_dir / "output.log").write_text(output)
    return PeerRun(process.returncode, seconds, output, specs)


def read_junit(path: Path) -> tuple[SpecResult, ...]:
    """Every spec of a ginkgo JUnit report (the suite's setup nodes left out)."""
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if name.startswith(("[SynchronizedBeforeSuite]", "[SynchronizedAfterSuite]")):
            continue
        failure = case.find("failure")
        error = case.find("error")
        text = "\n".join(
            (node.get("message", "") + "\n" + (node.text or "")).strip()
            for node in (failure, error)
            if node is not None
        )
        results.append(
            SpecResult(
                name=name.removeprefix("[It] "),
                state=case.get("status", ""),
                seconds=float(case.get("time", "0") or 0),
                failure=text,
            )
        )
    return tuple(results)
