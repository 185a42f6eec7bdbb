"""Root conftest: lets a bare checkout run the suites before the package is installed.

An installed k8s-netconform registers ``conformance.plugin`` through its ``pytest11`` entry
point; loading it a second time here would make pytest refuse the duplicate. Which tests run
(the suite when asked for, else ``testpaths``) is the plugin's rule, the same here as anywhere
(`conformance.kit.selection`).
"""

from importlib.metadata import entry_points

if not any(ep.value == "conformance.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["conformance.plugin"]
