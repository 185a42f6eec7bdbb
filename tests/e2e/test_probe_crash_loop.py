"""A probe that crash-loops stops the deployment's wait early, quoting the container's own last
words, instead of waiting out the readiness timeout (300 s) to report only "not Ready".

On a 3-node lab, the kit deploys a probe pod whose two agents are told the same fixed ports: the
second cannot bind (``serve cannot start: EADDRINUSE``), exits, is restarted with back-off, and
`conformance.kit.probes.deploy.wait_for_pods` gives up once it crash-loops, with that line from the
container (its termination message where the kubelet keeps one, else its previous log). The
lab is named ``$NETLAB_TEST_LAB_PREFIX`` (default ``tm``) + 6 hex digits.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from labrun import LabCase, running_lab

from conformance.kit.base.errors import ProbeDeploymentError
from conformance.kit.base.settings import DEFAULT_PROBE_IMAGE, Settings
from conformance.kit.cluster.namespace import (
    create_namespace,
    delete_namespace,
    namespace_name,
    new_run_id,
    wait_for_default_service_account,
)
from conformance.kit.probes import deploy
from conformance.kit.probes.model import ROLE_PEER, Probe, ProbeContainer
from conformance.kit.probes.podspecs import agent_configmap, pod_spec

pytestmark = pytest.mark.needs_lab

#: The readiness wait the suite would otherwise sit out.
PODS_READY = 300.0


def test_a_crash_looping_probe_stops_the_wait_with_its_last_words(tmp_path: Path) -> None:
    from kubernetes import client, config

    settings = Settings(kubeconfig=None, context=None, probe_image=DEFAULT_PROBE_IMAGE)
    timeouts = settings.timeouts
    with running_lab(LabCase()) as (_lab, kubeconfig):
        core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))  # type: ignore[no-untyped-call]
        run_id = new_run_id()
        namespace = namespace_name(run_id)
        create_namespace(core, namespace, run_id, timeouts)
        try:
            wait_for_default_service_account(core, namespace, timeouts)
            core.create_namespaced_config_map(namespace, agent_configmap(namespace, run_id))
            node = core.list_node().items[0].metadata.name
            # Two agents of one pod share its network namespace: the same fixed ports collide.
            clash = Probe(
                "clash-" + node,
                ROLE_PEER,
                node,
                (ProbeContainer("agent", 8080, 8081),),
            )
            pod = pod_spec(clash, namespace, run_id, settings)
            assert pod.spec is not None
            twin = client.ApiClient().sanitize_for_serialization(pod.spec.containers[0])
            twin["name"] = "twin"
            twin.pop("ports", None)  # port names are unique per pod; the clash is at bind time
            twin["command"] = [
                word.replace("netconform-agent-agent", "netconform-agent-twin")
                for word in twin["command"]
            ]
            twin["startupProbe"]["exec"]["command"] = [
                word.replace("netconform-agent-agent", "netconform-agent-twin")
                for word in twin["startupProbe"]["exec"]["command"]
            ]
            body = client.ApiClient().sanitize_for_serialization(pod)
            body["spec"]["containers"].append(twin)
            core.create_namespaced_pod(namespace, body)
            started = time.monotonic()
            with pytest.raises(ProbeDeploymentError) as raised:
                deploy.wait_for_pods(
                    core, namespace, [clash.name], timeout=PODS_READY, timeouts=timeouts
                )
            waited = time.monotonic() - started
        finally:
            delete_namespace(core, namespace, timeouts, wait=True)
    message = str(raised.value)
    print(
        f"crash loop seen after {waited:.1f} s (readiness timeout {PODS_READY:.0f} s):\n{message}"
    )
    assert "is crash-looping" in message
    assert "EADDRINUSE" in message, message
    assert waited < PODS_READY / 3, f"the wait took {waited:.0f} s"
