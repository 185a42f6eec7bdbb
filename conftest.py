"""Root conftest: lets a bare checkout run the suites before the package is installed.

An installed k8s-netconform registers ``conformance.plugin`` through its ``pytest11`` entry
point; loading it a second time here would make pytest refuse the duplicate.
"""

from importlib.metadata import entry_points

if not any(ep.value == "conformance.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["conformance.plugin"]

# pytest settles its rootdir before plugins register options, so in `pytest --kubeconfig PATH`
# it takes PATH for a test path, roots the run there and, finding no ini file, collects every
# test below the working directory. Keep such a run to the suites; explicit paths
# (`pytest tests`) are never ignored.
collect_ignore = ["tests", "bench", "netlab", "manifests", "docs", "reports"]
