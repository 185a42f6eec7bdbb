"""``netconform-report SUMMARY.json [-o REPORT.html]``: the HTML report again from a kept
``summary.json`` (CI systems keep artifacts; people open them later). The page is the block
the plugin draws at the top of pytest-html's report, plus the list of every check, in one
self-contained file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance.kit.reporting.html import render_page
from conformance.kit.reporting.results import SUMMARY_SCHEMA

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def dump_href(summary: dict[str, Any], summary_path: Path, output: Path) -> str | None:
    """The link from ``output`` to the pod states and events file kept beside the summary."""
    dump = summary.get("namespace_dump")
    if not isinstance(dump, dict) or not dump.get("file"):
        return None
    target = summary_path.resolve().parent / str(dump["file"])
    return Path(os.path.relpath(target, output.resolve().parent)).as_posix()


def load_summary(path: Path) -> dict[str, Any]:
    """The summary at ``path``; `ValueError` when it is not a k8s-netconform summary."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("schema") != SUMMARY_SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path} is not a {SUMMARY_SCHEMA} summary (schema: {found!r})")
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netconform-report",
        description="Write the HTML report of a k8s-netconform run from its summary.json.",
    )
    parser.add_argument("summary", type=Path, metavar="SUMMARY.json", help="a run's summary.json")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="REPORT.html",
        help="where to write the page (default: the summary's name with .html, beside it)",
    )
    args = parser.parse_args(argv)
    output: Path = args.output or args.summary.with_suffix(".html")
    try:
        summary = load_summary(args.summary)
    except ValueError as exc:
        sys.stderr.write(f"netconform-report: {exc}\n")
        return EXIT_BAD_INPUT
    try:
        page = render_page(summary, dump_href=dump_href(summary, args.summary, output))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # A summary edited by hand or cut short: say where, not a traceback.
        sys.stderr.write(
            f"netconform-report: {args.summary} is malformed: {type(exc).__name__}: {exc}\n"
        )
        return EXIT_BAD_INPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    sys.stdout.write(f"{output}\n")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
