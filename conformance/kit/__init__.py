"""Machinery the conformance suites share: cluster access, probes, planning, reports."""
