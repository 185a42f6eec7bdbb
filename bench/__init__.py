"""Benchmarks of the suite and the lab: ``./run.sh bench`` (``python -m bench``), see README."""
