"""NetworkPolicies (networking.k8s.io/v1) as kube-apiserver serves them: the v1 defaults and
``ValidateNetworkPolicy``'s checks, with the real server's 422 texts.

Defaults (``SetDefaults_NetworkPolicy``, ``SetDefaults_NetworkPolicyPort``), applied when a
request is decoded, so on create and on every update: ``policyTypes`` becomes ``["Ingress"]``,
plus ``"Egress"`` when the policy has egress rules, whenever it is empty or missing; a port
without ``protocol`` gets ``TCP``; a missing ``podSelector`` is the empty selector (the Go type
is a struct, never null).

Validation (pkg/apis/networking/validation of Kubernetes 1.31): label selectors (keys,
values, operators), ports (protocol, number or name, endPort), peers (at least one of
podSelector, namespaceSelector, ipBlock; ipBlock alone), ipBlock (cidr, except a strict subset)
and policyTypes. SCTP is accepted, as the API does; the lab's kernel carries no SCTP, so such
rules are compiled but no SCTP traffic can reach them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from netlab.api.errors import (
    field_cause,
    field_invalid,
    field_not_supported,
    invalid,
)
from netlab.api.meta import DNS1123_SUBDOMAIN, SUBDOMAIN_MSG
from netlab.api.resources.strategy import Strategy
from netlab.contract import JSONDict

GROUP = "networking.k8s.io"
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_RE = re.compile(f"^{_QUALIFIED_NAME}$")
_LABEL_VALUE = f"({_QUALIFIED_NAME})?"
_LABEL_VALUE_RE = re.compile(f"^{_LABEL_VALUE}$")
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{_QUALIFIED_NAME}')"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE}')"
)
_PORT_NUMBER = "must be between 1 and 65535, inclusive"


# --- defaults ---------------------------------------------------------------------------------


def apply_defaults(policy: JSONDict) -> JSONDict:
    """The v1 defaults, in place (see the module docstring); returns ``policy``."""
    spec = policy.get("spec")
    if not isinstance(spec, dict):
        spec = policy["spec"] = {}
    if spec.get("podSelector") is None:
        spec["podSelector"] = {}
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            if isinstance(rule, dict):
                for port in rule.get("ports") or []:
                    if isinstance(port, dict) and not port.get("protocol"):
                        port["protocol"] = "TCP"
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    return policy


# --- validation ---------------------------------------------------------------------------------


def qualified_name_problems(name: str) -> list[str]:
    """validation.IsQualifiedName (label keys)."""
    problems: list[str] = []
    parts = name.split("/")
    if len(parts) > 2:
        return [
            f"a qualified name {_QUALIFIED_NAME_MSG}"
            " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    short = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                problems.append("prefix part must be no more than 253 characters")
            if not DNS1123_SUBDOMAIN.match(prefix):
                problems.append(f"prefix part {SUBDOMAIN_MSG}")
    if not short:
        problems.append("name part must be non-empty")
    elif len(short) > 63:
        problems.append("name part must be no more than 63 characters")
    if not _QUALIFIED_NAME_RE.match(short):
        problems.append(f"name part {_QUALIFIED_NAME_MSG}")
    return problems


def label_value_problems(value: str) -> list[str]:
    """validation.IsValidLabelValue."""
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _LABEL_VALUE_RE.match(value):
        problems.append(_LABEL_VALUE_MSG)
    return problems


def port_name_problems(name: str) -> list[str]:
    """validation.IsValidPortName."""
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search(r"[a-z]", name):
        problems.append("must contain at least one letter (a-z)")
    if name.startswith("-") or name.endswith("-") or "--" in name:
        problems.append("must not begin or end with a hyphen and hyphens can not be adjacent")
    return problems


def selector_causes(selector: Any, path: str) -> list[JSONDict]:
    """ValidateLabelSelector: matchLabels keys and values, then each requirement."""
    if not isinstance(selector, dict):
        return []
    causes: list[JSONDict] = []
    labels_path = f"{path}.matchLabels"
    for key, value in (selector.get("matchLabels") or {}).items():
        causes += [field_invalid(labels_path, key, p) for p in qualified_name_problems(str(key))]
        causes += [field_invalid(labels_path, value, p) for p in label_value_problems(str(value))]
    for index, requirement in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{index}]"
        operator = requirement.get("operator")
        values = requirement.get("values") or []
        if operator in ("In", "NotIn"):
            if not values:
                causes.append(
                    field_cause(
                        f"{where}.values",
                        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                        "FieldValueRequired",
                    )
                )
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                causes.append(
                    field_cause(
                        f"{where}.values",
                        "Forbidden: may not be specified when `operator` is 'Exists' or "
                        "'DoesNotExist'",
                        "FieldValueForbidden",
                    )
                )
        else:
            causes.append(
                field_invalid(f"{where}.operator", operator, "not a valid selector operator")
            )
        key = str(requirement.get("key", ""))
        causes += [field_invalid(f"{where}.key", key, p) for p in qualified_name_problems(key)]
        for value_index, value in enumerate(values):
            causes += [
                field_invalid(f"{where}.values[{value_index}]", value, p)
                for p in label_value_problems(str(value))
            ]
    return causes


def port_causes(port: JSONDict, path: str) -> list[JSONDict]:
    """ValidateNetworkPolicyPort."""
    causes: list[JSONDict] = []
    protocol = port.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        causes.append(field_not_supported(f"{path}.protocol", protocol, PROTOCOLS))
    number = port.get("port")
    end_port = port.get("endPort")
    if number is None:
        if end_port is not None:
            causes.append(
                field_invalid(
                    f"{path}.endPort", end_port, "may not be specified when `port` is not specified"
                )
            )
    elif isinstance(number, int):
        if not 1 <= number <= 65535:
            causes.append(field_invalid(f"{path}.port", number, _PORT_NUMBER))
        if end_port is not None:
            if end_port < number:
                causes.append(
                    field_invalid(
                        f"{path}.endPort", end_port, "must be greater than or equal to `port`"
                    )
                )
            if not 1 <= end_port <= 65535:
                causes.append(field_invalid(f"{path}.endPort", end_port, _PORT_NUMBER))
    else:
        if end_port is not None:
            causes.append(
                field_invalid(
                    f"{path}.endPort", end_port, "may not be specified when `port` is non-numeric"
                )
            )
        causes += [
            field_invalid(f"{path}.port", number, p) for p in port_name_problems(str(number))
        ]
    return causes


def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """netutils.ParseCIDRSloppy's acceptance: an address/prefix, host bits allowed."""
    if "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def ip_block_causes(block: JSONDict, path: str) -> list[JSONDict]:
    """ValidateIPBlock (1.31): cidr required and valid; every except valid and a strict
    subset of cidr (the first invalid except ends the checks)."""
    cidr_text = block.get("cidr") or ""
    if not cidr_text:
        return [field_cause(f"{path}.cidr", "Required value", "FieldValueRequired")]
    cidr = _cidr(cidr_text)
    if cidr is None:
        return [field_invalid(f"{path}.cidr", cidr_text, "not a valid CIDR")]
    causes: list[JSONDict] = []
    for index, text in enumerate(block.get("except") or []):
        where = f"{path}.except[{index}]"
        cut = _cidr(text)
        if cut is None:
            causes.append(field_invalid(where, text, "not a valid CIDR"))
            return causes
        if (
            cut.version != cidr.version
            or cut.network_address not in cidr
            or cidr.prefixlen >= cut.prefixlen
        ):
            causes.append(field_invalid(where, text, "must be a strict subset of `cidr`"))
    return causes


def peer_causes(peer: JSONDict, path: str) -> list[JSONDict]:
    """ValidateNetworkPolicyPeer."""
    causes: list[JSONDict] = []
    given = 0
    for key in ("podSelector", "namespaceSelector"):
        if peer.get(key) is not None:
            given += 1
            causes += selector_causes(peer[key], f"{path}.{key}")
    if peer.get("ipBlock") is not None:
        given += 1
        causes += ip_block_causes(peer["ipBlock"], f"{path}.ipBlock")
    if given == 0:
        causes.append(
            field_cause(path, "Required value: must specify a peer", "FieldValueRequired")
        )
    elif given > 1 and peer.get("ipBlock") is not None:
        causes.append(
            field_cause(
                path,
                "Forbidden: may not specify both ipBlock and another peer",
                "FieldValueForbidden",
            )
        )
    return causes


def spec_causes(spec: JSONDict) -> list[JSONDict]:
    """ValidateNetworkPolicySpec, in its order: podSelector, ingress, egress, policyTypes."""
    causes = selector_causes(spec.get("podSelector"), "spec.podSelector")
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for index, rule in enumerate(spec.get(direction) or []):
            where = f"spec.{direction}[{index}]"
            for port_index, port in enumerate(rule.get("ports") or []):
                causes += port_causes(port, f"{where}.ports[{port_index}]")
            for peer_index, peer in enumerate(rule.get(peers_key) or []):
                causes += peer_causes(peer, f"{where}.{peers_key}[{peer_index}]")
    types = spec.get("policyTypes") or []
    if len(types) > len(POLICY_TYPES):
        listed = ", ".join(json.dumps(t) for t in types)
        causes.append(
            field_cause(
                "spec.policyTypes",
                f"Invalid value: []networking.PolicyType{{{listed}}}: "
                "may not specify more than two policyTypes",
            )
        )
        return causes
    for index, policy_type in enumerate(types):
        if policy_type not in POLICY_TYPES:
            causes.append(
                field_not_supported(f"spec.policyTypes[{index}]", policy_type, POLICY_TYPES)
            )
    return causes


def admit(policy: JSONDict) -> JSONDict:
    """Defaults applied and the spec validated (422 Invalid with every cause); the schema and
    the name were checked by admission before."""
    apply_defaults(policy)
    name = str((policy.get("metadata") or {}).get("name", ""))
    causes = spec_causes(policy["spec"])
    if causes:
        raise invalid("NetworkPolicy", name, causes, GROUP)
    return policy


class NetworkPolicyStrategy(Strategy):
    """Defaults at decoding (before validation), then the networking/v1 validation."""

    def decode(self, obj: JSONDict) -> None:
        apply_defaults(obj)

    def prepare_for_create(self, obj: JSONDict) -> JSONDict:
        return admit(obj)

    def validate_update(self, obj: JSONDict, existing: JSONDict) -> JSONDict:
        return admit(obj)
