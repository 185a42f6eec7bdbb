"""The project's hypothesis settings, loaded by the conftests of the tiers that use it.

No deadline per example: how long an example takes is a figure for benchmarks, not a unit
test's verdict, and CI's machine runs labs beside the unit tests (hypothesis's 200 ms default
failed there under load)."""

from hypothesis import settings

PROFILE = "netconform"
settings.register_profile(PROFILE, deadline=None)
settings.load_profile(PROFILE)
