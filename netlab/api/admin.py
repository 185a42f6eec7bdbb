"""Switching a running lab's API faults: the server's admin endpoint and its client.

``GET /netlab/api-faults`` answers ``{"faults": ["throttle=0.1", ...]}``; ``PUT`` with the same
shape replaces them all at once (``[]`` back to a healthy server). It takes the lab's bearer
token like every API path, and no fault ever touches it (it is not reachable while a restart
fault has the API down). ``netlab api-faults --name LAB [--set NAME[=VALUE]]... [--clear]``
calls it; without ``--name`` the command lists the API fault modes.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from netlab.api.errors import ApiError
from netlab.api.faults import ApiFaultError, FaultSwitch, describe_api_faults, parse_api_faults
from netlab.api.request import NOT_FOUND, read_body
from netlab.spec import INFO_FILE

log = logging.getLogger("netlab.api.faults")

ADMIN_PREFIX = "/netlab/"
FAULTS_PATH = "/netlab/api-faults"
CLIENT_TIMEOUT = 10.0


class AdminError(Exception):
    """The lab's admin endpoint could not be asked; the message is one line."""


async def serve_admin(request: web.Request, path: str, switch: FaultSwitch) -> web.Response:
    """GET or PUT the lab's API faults."""
    if path.rstrip("/") != FAULTS_PATH:
        raise ApiError(404, NOT_FOUND, details={})
    if request.method == "PUT":
        body = await read_body(request, kind="ApiFaults")
        specs = body.get("faults") if isinstance(body, dict) else None
        if not isinstance(specs, list) or not all(isinstance(spec, str) for spec in specs):
            raise ApiError(400, 'the body must be {"faults": ["NAME[=VALUE]", ...]}')
        try:
            faults = parse_api_faults(specs)
        except ApiFaultError as error:
            raise ApiError(400, str(error)) from None
        switch.set(faults)
        log.info("api faults switched to %s", list(faults.specs) or "none")
    elif request.method != "GET":
        raise ApiError(405, "the server does not allow this method on the requested resource")
    return web.json_response({"faults": list(switch.current.specs)})


def lab_api_faults(kubeconfig: Path, specs: list[str] | None = None) -> list[str]:
    """The lab's API faults (after replacing them with ``specs`` when given), asked through
    the kubeconfig's server, token and CA."""
    try:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        token = config["users"][0]["user"].get("token", "")
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as error:
        raise AdminError(f"cannot read kubeconfig {kubeconfig}: {error}") from None
    data = None if specs is None else json.dumps({"faults": specs}).encode()
    request = urllib.request.Request(
        cluster["server"] + FAULTS_PATH, data=data, method="GET" if data is None else "PUT"
    )
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context()
    if cluster.get("certificate-authority-data"):
        context.load_verify_locations(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT, context=context) as answer:
            reply: Any = json.load(answer)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error).get("message", error.reason)
        except ValueError:
            message = error.reason
        raise AdminError(f"the lab refused: {message}") from None
    except (OSError, ValueError) as error:
        raise AdminError(f"cannot reach the lab's API at {cluster['server']}: {error}") from None
    return [str(spec) for spec in reply.get("faults", [])]


def add_api_faults_command(commands: Any) -> None:
    """``netlab api-faults`` on the CLI's subcommands (an argparse subparsers action)."""
    parser = commands.add_parser(
        "api-faults", help="list the API fault modes, or show or switch a running lab's"
    )
    parser.add_argument("--name", help="a running lab: print its API faults (or switch them)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="replace the lab's API faults with these (repeatable)",
    )
    parser.add_argument("--clear", action="store_true", help="remove every API fault")
    parser.set_defaults(handler=command_api_faults)


def _say(message: str) -> None:
    print(f"netlab: {message}", file=sys.stderr, flush=True)


def command_api_faults(args: argparse.Namespace) -> int:
    if not args.name:
        if args.set or args.clear:
            _say("--set and --clear need --name LAB")
            return 2
        print(describe_api_faults())
        return 0
    if args.set and args.clear:
        _say("give --set or --clear, not both")
        return 2
    try:
        parse_api_faults(args.set)
    except ApiFaultError as error:
        _say(str(error))
        return 2
    try:
        info = json.loads((Path(args.state_root) / args.name / INFO_FILE).read_text())
    except (OSError, ValueError):
        _say(f"no running lab named {args.name}")
        return 1
    try:
        specs = lab_api_faults(Path(info["kubeconfig"]), [] if args.clear else (args.set or None))
    except AdminError as error:
        _say(str(error))
        return 1
    print("\n".join(specs) if specs else "none")
    return 0
