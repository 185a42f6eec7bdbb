"""`conformance.kit.base.settings`: the frozen Timeouts and Settings, and the option parsers (each a
``type=`` callable raising ``pytest.UsageError``): node selector, scalars, kubeconfig
resolution, taint tolerations and pull secrets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from conformance.kit.base.settings import (
    DEFAULT_PROBE_IMAGE,
    PullSecret,
    Settings,
    TaintToleration,
    Timeouts,
    check_pull_secrets,
    parse_image_pull_policy,
    parse_ip_family,
    parse_max_loss,
    parse_max_nodes,
    parse_node_selector,
    parse_probe_timeout,
    parse_pull_secret,
    parse_taint_toleration,
    resolve_kubeconfig,
)

ROOT = Path(__file__).resolve().parents[2]


def settings(**overrides: Any) -> Settings:
    return Settings(kubeconfig=None, context=None, **overrides)


# --- Timeouts and Settings ---------------------------------------------------------------------


def test_timeouts_frozen_and_scaled() -> None:
    timeouts = Timeouts.for_probe_timeout(10.0)
    assert timeouts.probe == 10.0
    assert timeouts.exec_overhead >= 40.0
    assert timeouts.exec_budget(3) == timeouts.exec_overhead + 3 * (10.0 + timeouts.capture_wait)
    with pytest.raises(dataclasses.FrozenInstanceError):
        timeouts.probe = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().max_nodes = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("probes", "parallel", "rounds"),
    [(0, 1, 0), (1, 1, 1), (3, 1, 3), (3, 64, 1), (64, 64, 1), (65, 64, 2), (10, 4, 3), (5, 0, 5)],
)
def test_exec_budget_counts_rounds_of_parallel_attempts(
    probes: int, parallel: int, rounds: int
) -> None:
    timeouts = Timeouts(probe=2.0, capture_wait=1.0, exec_overhead=30.0)
    assert timeouts.exec_budget(probes, parallel) == 30.0 + rounds * 3.0


def test_every_timeout_is_documented() -> None:
    source = (ROOT / "conformance/kit/base/settings.py").read_text()
    for item in dataclasses.fields(Timeouts):
        assert re.search(rf"#: .*\n    {item.name}:", source), f"Timeouts.{item.name} undocumented"


def test_settings_defaults() -> None:
    s = settings()
    assert s.probe_image == DEFAULT_PROBE_IMAGE
    assert ":" in s.probe_image
    assert not s.probe_image.endswith(":latest")
    assert s.image_pull_policy == "IfNotPresent"
    assert s.ip_family == "auto"
    assert s.strict is False  # a pass on retry passes (and is reported flaky) unless asked


def test_kubeconfig_resolution(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert resolve_kubeconfig("/opt/k", {"KUBECONFIG": "/env/k", "HOME": str(home)}) == "/opt/k"
    assert resolve_kubeconfig(None, {"KUBECONFIG": "/env/k", "HOME": str(home)}) == "/env/k"
    assert resolve_kubeconfig(None, {"HOME": str(home)}) is None  # in-cluster
    default = home / ".kube" / "config"
    default.parent.mkdir(parents=True)
    default.write_text("{}")
    assert resolve_kubeconfig(None, {"HOME": str(home)}) == str(default)


# --- parsers -----------------------------------------------------------------------------------


def test_node_selector_parses_pairs() -> None:
    assert dict(parse_node_selector("")) == {}
    assert dict(parse_node_selector("a=b, kubernetes.io/os=linux,empty=")) == {
        "a": "b",
        "kubernetes.io/os": "linux",
        "empty": "",
    }


@pytest.mark.parametrize("text", ["a", "=b", "a=b c", "a/b/c=d", "-a=b", "a=b=c"])
def test_node_selector_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="--node-selector"):
        parse_node_selector(text)


def test_scalar_parsers() -> None:
    assert parse_max_nodes("4") == 4
    assert parse_probe_timeout("0.5") == 0.5
    assert parse_image_pull_policy("never") == "Never"
    assert parse_ip_family("DUAL") == "dual"
    for parser, bad in [
        (parse_max_nodes, "-1"),
        (parse_probe_timeout, "0"),
        (parse_probe_timeout, "301"),
        (parse_image_pull_policy, "sometimes"),
        (parse_ip_family, "ipx"),
    ]:
        with pytest.raises(pytest.UsageError):
            parser(bad)


def test_max_loss_is_a_percentage_and_strict_means_none() -> None:
    assert parse_max_loss("5") == 5.0
    assert parse_max_loss("2.5%") == 2.5
    assert parse_max_loss("0") == 0.0
    for bad, complaint in (
        ("100", "must be a percentage in [0, 100)"),
        ("-1", "must be a percentage in [0, 100)"),
        ("nan", "must be a percentage in [0, 100)"),
        ("lots", "'lots' is not a percentage"),
    ):
        with pytest.raises(pytest.UsageError, match=re.escape(f"--max-loss: {complaint}")):
            parse_max_loss(bad)
    assert settings().max_loss_ratio == 0.05
    assert settings(max_loss=2.0).max_loss_ratio == 0.02
    assert settings(max_loss=2.0, strict=True).max_loss_ratio == 0.0


def test_taint_toleration_parses() -> None:
    assert parse_taint_toleration("dedicated") == TaintToleration("dedicated")
    assert parse_taint_toleration("example.com/gpu:noexecute") == TaintToleration(
        "example.com/gpu", "NoExecute"
    )
    assert str(parse_taint_toleration("a:NoSchedule")) == "a:NoSchedule"
    tol = TaintToleration("a")
    assert tol.tolerates("a", "NoExecute")
    assert tol.tolerates("a", "NoSchedule")
    assert not tol.tolerates("b", "NoSchedule")
    assert not TaintToleration("a", "NoSchedule").tolerates("a", "NoExecute")


@pytest.mark.parametrize("text", ["", ":NoSchedule", "a:Sometimes", "a b", "a/b/c"])
def test_taint_toleration_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="--tolerate-taint"):
        parse_taint_toleration(text)


def test_pull_secrets_parse_and_clash() -> None:
    assert parse_pull_secret("regcred") == PullSecret("regcred", "default")
    assert parse_pull_secret("infra/regcred") == PullSecret("regcred", "infra")
    for bad in ("", "Reg_Cred", "a/b/c", "/x", "ns/"):
        with pytest.raises(pytest.UsageError, match="--image-pull-secret"):
            parse_pull_secret(bad)
    same = parse_pull_secret("regcred")
    assert check_pull_secrets([same, same, parse_pull_secret("infra/other")]) == (
        same,
        PullSecret("other", "infra"),
    )
    with pytest.raises(pytest.UsageError, match="both be copied as 'regcred'"):
        check_pull_secrets([same, parse_pull_secret("infra/regcred")])


def test_control_plane_option_adds_its_tolerations() -> None:
    assert settings().tolerations == ()
    cp = settings(include_control_plane=True).tolerations
    assert {t.key for t in cp} == {
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    }
    assert all(t.effect is None for t in cp)
    both = settings(include_control_plane=True, tolerate_taints=(TaintToleration("gpu"),))
    assert both.tolerations[0] == TaintToleration("gpu")
    assert len(both.tolerations) == 3
