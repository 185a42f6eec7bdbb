"""The suite's one root for "could not test": every failure that leaves a check without a
verdict on the network (cluster unreachable, an API call refused, probes never Ready, a probe
container that cannot be asked) is a `CouldNotTest`.

The plugin reports any `CouldNotTest` raised by a check or its fixtures as an error, its text
derived from the type (`conformance.kit.verdicts.failures.could_not_test_text`), never as a broken rule,
and the run exits 2. The message is the short cause for triage; full
objects go to the log and the namespace dump.
"""

from __future__ import annotations


class CouldNotTest(Exception):
    """A check could not be made: no verdict on the network."""


class ClusterError(CouldNotTest):
    """The cluster could not be reached or refused a call."""


class ProbeDeploymentError(CouldNotTest):
    """The probes could not be deployed or never became Ready."""


class ProbeCallError(CouldNotTest):
    """Asking a probe container failed (exec, agent, protocol); ``pod``/``container`` say where
    when one container is to blame."""

    def __init__(
        self,
        message: str,
        *,
        pod: str | None = None,
        container: str | None = None,
        stderr: str = "",
    ) -> None:
        detail = message
        if pod is not None:
            detail += f" [pod {pod}, container {container or '?'}]"
        if stderr.strip():
            detail += f"\nstderr:\n{stderr.strip()[-2000:]}"
        super().__init__(detail)
        self.pod = pod
        self.container = container
        self.stderr = stderr


class ProbeExecError(ProbeCallError):
    """The exec could not be opened, timed out, or the command exited non-zero."""


class ProbeStreamError(ProbeExecError):
    """The exec stream broke before the command's exit status arrived (a cut connection, an
    API server restart): whether the command ran is unknown, so the call may be repeated."""


class ProbeProtocolError(ProbeCallError):
    """The agent's output was not the JSON list the protocol promises."""


class SweepError(CouldNotTest):
    """The run's reachability sweep as a whole could not run."""


class PrefetchError(CouldNotTest):
    """The run's prefetch as a whole could not run, or one item's container could not be
    asked."""


class ProbeGoneError(CouldNotTest):
    """A pod a check's verdict rests on is gone or stopped (deleted, evicted, crashed), so the
    check cannot tell whether its rule held."""
