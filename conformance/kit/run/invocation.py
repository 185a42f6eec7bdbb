"""How a user asks pytest for the suite, and how pytest is made to read that request as meant.

The rule (README "Install"): the suite runs when the user asks for it and names no test paths.
Asking is ``--netconform``, or one of the cluster options ``--kubeconfig`` / ``--context`` (when
this plugin owns them). The suite is then collected from the installed ``conformance`` package,
wherever the working directory is, with test IDs ``conformance/test_*.py::...``. Test paths (or
``--pyargs``) are always honoured as given and nothing is added to them; a project that runs its
own tests without a cluster option never sees the suite. A run that collects nothing says how
to ask for the suite instead of only "no tests ran".

One pytest limit needs working around: pytest settles its rootdir and ini file before any
plugin has registered its options, so in ``--kubeconfig PATH`` (two words) it takes PATH for a
test path, roots the run in PATH's folder and loses the project's ini file (pytest issues 1471,
8846). Only the one-word ``--kubeconfig=PATH`` is safe. When that happened (an option value of
ours, written as a separate word, names an existing path), the plugin runs pytest again, in the
same process and before anything was configured, with those options written in one word:
`rerun_args` and `rerun`. Only public pytest API is involved (``pytest.main``, the invocation
arguments), so the fix holds across pytest versions; see `conformance.plugin.pytest_cmdline_main`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import conformance

#: The folder of the installed suite (``conformance/test_*.py``).
SUITE_DIR = Path(conformance.__file__).resolve().parent
#: How the suite's modules are named in test IDs, wherever the package is installed.
SUITE_ID_PREFIX = "conformance"
#: Set in the environment of the second pytest run, so it never starts a third.
RERUN_ENV = "NETCONFORM_REROOTED"
ADDOPTS_ENV = "PYTEST_ADDOPTS"
#: The second run finds the plugins the first one imported (through the same assertion-rewriting
#: import hook) already in ``sys.modules``; pytest would warn that it cannot rewrite them again.
ALREADY_IMPORTED_FILTER = (
    "-W",
    "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning",
)


def join_option_values(args: Sequence[str], options: Collection[str]) -> list[str]:
    """``args`` with every ``--option VALUE`` of ``options`` written as ``--option=VALUE``
    (arguments after a ``--`` are left alone)."""
    joined: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--":
            joined.extend(args[position:])
            break
        if arg in options and position + 1 < len(args):
            joined.append(f"{arg}={args[position + 1]}")
            position += 2
            continue
        joined.append(arg)
        position += 1
    return joined


def _separate_values(args: Sequence[str], options: Collection[str]) -> Iterator[str]:
    for position, arg in enumerate(args[:-1]):
        if arg == "--":
            return
        if arg in options:
            yield args[position + 1]


def misleading_values(
    args: Sequence[str], options: Collection[str], cwd: Path | None = None
) -> list[str]:
    """Values of ``options`` written as a separate word that name an existing path: pytest's
    early rootdir search took them for test paths."""
    base = cwd or Path.cwd()
    return [
        value
        for value in _separate_values(args, options)
        if value and not value.startswith("-") and (base / value).exists()
    ]


@dataclass(frozen=True)
class Rerun:
    """A second pytest run: its arguments and, when it changed, ``$PYTEST_ADDOPTS``."""

    args: tuple[str, ...]
    addopts: str | None = None


def rerun_args(
    args: Sequence[str], environ: Mapping[str, str], options: Collection[str]
) -> Rerun | None:
    """The run to make instead of this one when an option value misled pytest's rootdir search
    (in the command line or in ``$PYTEST_ADDOPTS``, which pytest reads first); None when this
    run is right, or is already the second one."""
    if environ.get(RERUN_ENV):
        return None
    addopts_args = shlex.split(environ.get(ADDOPTS_ENV, ""))
    misled = misleading_values(args, options) + misleading_values(addopts_args, options)
    if not misled:
        return None
    addopts = None
    if misleading_values(addopts_args, options):
        addopts = shlex.join(join_option_values(addopts_args, options))
    return Rerun((*join_option_values(args, options), *ALREADY_IMPORTED_FILTER), addopts)


@contextmanager
def _rerun_environment(addopts: str | None) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in (RERUN_ENV, ADDOPTS_ENV)}
    os.environ[RERUN_ENV] = "1"
    if addopts is not None:
        os.environ[ADDOPTS_ENV] = addopts
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def given_plugins(pluginmanager: pytest.PytestPluginManager) -> list[object]:
    """The plugin objects a program handed to ``pytest.main(args, plugins=[...])``: registered
    without a name, so pluggy named them by their id (every other plugin has a name)."""
    return [
        plugin
        for plugin in pluginmanager.get_plugins()
        if pluginmanager.get_name(plugin) == str(id(plugin))
    ]


def rerun(plan: Rerun, plugins: Sequence[object] = ()) -> int:
    """Run pytest again in this process with ``plan``'s arguments and the plugin objects the
    first run was given (`given_plugins`); its exit code."""
    with _rerun_environment(plan.addopts):
        return int(pytest.main(list(plan.args), plugins=list(plugins)))


def suite_module_id(module_path: Path) -> str | None:
    """``conformance/<file>`` for a module of the installed suite, None for any other file."""
    if module_path.resolve().parent != SUITE_DIR:
        return None
    return f"{SUITE_ID_PREFIX}/{module_path.name}"


# --- messages for runs that collected nothing -------------------------------------------------

HOW_TO_ASK = (
    "pytest --kubeconfig PATH (or --kubeconfig=PATH, --context NAME) runs the whole "
    "k8s-netconform suite, as does pytest --netconform against $KUBECONFIG, ~/.kube/config "
    "or the in-cluster configuration"
)


def nothing_collected_hint(*, asked: str | None, paths_given: bool) -> str:
    """What to tell a user whose run collected no test, given how (if at all) they asked for
    the suite (``asked``: the option that asked) and whether they named test paths."""
    if asked is None:
        return f"netconform: the suite was not asked for. {HOW_TO_ASK}."
    if paths_given:
        return (
            f"netconform: {asked} was given with test paths, so only those paths were "
            "collected and they hold no test. Leave the paths out to run the whole suite, or "
            "name suite modules with --pyargs conformance.test_localhost ..."
        )
    return (
        "netconform: every check of the suite was deselected (-k, -m, --deselect); "
        "pytest --kubeconfig PATH --collect-only -q lists them"
    )
