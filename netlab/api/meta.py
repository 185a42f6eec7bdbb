"""Object metadata helpers: timestamps, uids, name rules (DNS-1123), generateName."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
# The apiserver's random suffix alphabet (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def new_uid() -> str:
    return str(uuid.uuid4())


def generate_name(prefix: str) -> str:
    """generateName: prefix (cut to leave room) plus 5 random characters."""
    return prefix[:58] + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


def name_problem(name: str, *, label: bool) -> str | None:
    """Why ``name`` is not a valid DNS-1123 label/subdomain, or None when it is."""
    limit = 63 if label else 253
    if len(name) > limit:
        return f"must be no more than {limit} characters"
    pattern, msg = (DNS1123_LABEL, LABEL_MSG) if label else (DNS1123_SUBDOMAIN, SUBDOMAIN_MSG)
    return None if pattern.match(name) else msg


def age(timestamp: str | None) -> str:
    """Human age like kubectl prints it (e.g. 5s, 3m, 2h, 4d)."""
    if not timestamp:
        return "<unknown>"
    try:
        seconds = int((datetime.now(UTC) - parse_rfc3339(timestamp)).total_seconds())
    except ValueError:
        return "<unknown>"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def set_pod_condition(status: dict[str, Any], condition: dict[str, Any]) -> None:
    """Put ``condition`` into a pod status, replacing one of its type (PodScheduled first, as
    the scheduler writes it; others last)."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != condition["type"]]
    status["conditions"] = (
        [condition, *conditions]
        if condition["type"] == "PodScheduled"
        else [*conditions, condition]
    )
