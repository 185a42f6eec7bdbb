"""Probe pods that change under a run (evicted, deleted, restarted): each pod's life (`PodLife`:
uid, restarts, why it is going away), told apart between two looks (`changed_pods`), and why
what a pod did is then no evidence about the network (`why_lost`, `blame_removal`). The pod
status readers deployment shares (`pod_ready`, `removal_reason`) live here too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import call_api, name_of


def pod_ready(pod: client.V1Pod) -> bool:
    """The pod's Ready condition is True."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


def disruption(pod: client.V1Pod) -> str | None:
    """Why the control plane is taking the pod away (its ``DisruptionTarget`` condition, e.g.
    ``EvictionByEvictionAPI: Eviction API: evicting``), None when it says nothing."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return f"{condition.reason or 'DisruptionTarget'}: {condition.message or ''}".rstrip(
                ": "
            )
    return None


def removal_reason(pod: client.V1Pod) -> str | None:
    """Why ``pod`` is going away (deleted, evicted), None while it is not."""
    meta = pod.metadata
    if meta is None or meta.deletion_timestamp is None:
        return None
    why = disruption(pod)
    return f"pod is being deleted{f' ({why})' if why else ''}: evicted or deleted by someone else"


@dataclass(frozen=True)
class PodLife:
    """What identifies one life of a probe pod: its uid, each container's restart count, and
    why it is going away (None while it is not)."""

    uid: str
    restarts: Mapping[str, int]
    removal: str | None = None


def pod_lives(
    core: client.CoreV1Api, namespace: str, timeouts: Timeouts
) -> dict[str, PodLife] | None:
    """Every pod of ``namespace`` as `PodLife`, by name; None when the pods cannot be listed
    (then nothing can be said about them)."""
    try:
        listed = call_api(
            f"list pods in {namespace}", core.list_namespaced_pod, namespace, timeouts=timeouts
        )
    except (ClusterError, ApiException):
        return None
    return {name_of(pod): pod_life(pod) for pod in listed.items}


def pod_life(pod: client.V1Pod) -> PodLife:
    """``pod`` as `PodLife`."""
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return PodLife(
        uid=str(pod.metadata.uid if pod.metadata else ""),
        restarts={cs.name: int(cs.restart_count or 0) for cs in statuses},
        removal=removal_reason(pod),
    )


def taken_away(name: str, life: PodLife | None) -> str | None:
    """Why probe pod ``name`` is gone (``life`` None) or going away, None while it lives."""
    if life is None:
        return f"probe pod {name} was deleted or evicted"
    if life.removal is not None:
        return f"probe pod {name}: {life.removal}"
    return None


def blame_removal(pod: str, error: str, lives: Mapping[str, PodLife] | None) -> str | None:
    """``error`` behind its first cause when ``pod`` itself was taken away (evicted or
    deleted): an exec into a container stopped for that says only "not running", which would
    send the person on call after the wrong fault. None when it was not, or ``lives`` (None:
    the pods could not be listed) cannot tell."""
    gone = taken_away(pod, lives.get(pod)) if lives is not None else None
    return f"{gone} ({error})" if gone is not None else None


def why_lost(
    pods: Iterable[str], before: Mapping[str, PodLife], changed: Mapping[str, str]
) -> str | None:
    """Why what ``pods`` did between two looks is no evidence about the network: one was gone
    or going away at the first look (``before``), or did not live on unchanged to the second
    (``changed``, from `changed_pods`); None when every one lived on."""
    for pod in pods:
        why = taken_away(pod, before.get(pod)) or changed.get(pod)
        if why is not None:
            return why
    return None


def changed_pods(before: Mapping[str, PodLife], after: Mapping[str, PodLife]) -> dict[str, str]:
    """The pods of ``before`` that did not live on unchanged into ``after``, with why: gone
    (deleted or evicted), being deleted, replaced (another uid), or a container restarted (its
    agent lost what its listeners recorded)."""
    changed = {}
    for name, then in before.items():
        now = after.get(name)
        if now is None or now.removal is not None:
            changed[name] = f"{taken_away(name, now)}{' meanwhile' if now is None else ''}"
        elif now.uid != then.uid:
            changed[name] = f"probe pod {name} was replaced meanwhile (uid {then.uid} -> {now.uid})"
        else:
            restarted = sorted(
                f"{c} ({then.restarts[c]} -> {now.restarts.get(c, 0)} restarts)"
                for c in then.restarts
                if now.restarts.get(c, 0) != then.restarts[c]
            )
            if restarted:
                changed[name] = (
                    f"probe pod {name}: container {', '.join(restarted)} restarted meanwhile, "
                    "losing what its agent had recorded"
                )
    return changed


def container_running(pod: client.V1Pod, container: str) -> bool:
    """``container`` of ``pod`` is running now (state ``running``)."""
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == container:
            return cs.state is not None and cs.state.running is not None
    return False


def restart_count(pod: client.V1Pod, container: str) -> int:
    """How often ``container`` of ``pod`` was restarted (0 when unknown)."""
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == container:
            return int(cs.restart_count or 0)
    return 0
