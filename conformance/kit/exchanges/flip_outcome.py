"""The readiness flip's outcome as data (`ReadinessFlip`, one `Followed` per node and family):
what `conformance.kit.exchanges.readiness` saw, what the judge reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.kit.base.jsondata import JSONData
from conformance.kit.exchanges.reachability import Outcome, Unplanned


@dataclass(frozen=True)
class Followed(JSONData):
    """What one node's probe pod saw of the flipped backend over one IP family: seconds from
    the EndpointSlice change until a spread no longer reached it (``stopped_after``) and until
    one reached it again (``back_after``); None when that did not happen within the bound. The
    spreads that decided (or the last ones), and how many rounds it took."""

    node: str
    family: int
    stopped_after: float | None = None
    back_after: float | None = None
    unready: Outcome | None = None
    ready: Outcome | None = None
    rounds_unready: int = 0
    rounds_ready: int = 0
    unplanned: Unplanned | None = None
    error: str | None = None


@dataclass(frozen=True)
class ReadinessFlip(JSONData):
    """The run's readiness flip: the backend, how long its EndpointSlice took to say so
    (seconds from the flip; None: not within `Timeouts.endpoint_update`), the data plane's
    bound (`Timeouts.endpoint_follow`), and what each node saw."""

    backend: str
    node: str
    bound: float
    slice_unready_after: float | None = None
    slice_ready_after: float | None = None
    followed: tuple[Followed, ...] = field(default_factory=tuple)
    error: str | None = None

    def of(self, node: str, family: int) -> Followed | None:
        for found in self.followed:
            if (found.node, found.family) == (node, family):
                return found
        return None
