"""``python -m server dial TO --from FROM``: place an outbound call through a running bridge's
``POST /calls`` (``--bridge``, default ``http://127.0.0.1:5000``) with ``$BRIDGE_CONTROL_TOKEN``,
so its rate limit, agents and callbacks are the server's. Prints the JSON answer; exit status
0 on 201, 1 otherwise, 2 on a usage error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import httpx

PROG = "twilio-agent-bridge dial"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("to", help="E.164 number (or client:NAME) to call")
    p.add_argument("--from", dest="from_", required=True, help="your Twilio number (E.164)")
    p.add_argument("--agent", help="agent name: a --route file's stem, or default")
    p.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                   help="repeatable: a custom <Parameter> of the call's stream")  # fmt: skip
    p.add_argument("--bridge", default="http://127.0.0.1:5000", help="the bridge's base URL")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the answer")
    try:
        args = p.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    token = os.environ.get("BRIDGE_CONTROL_TOKEN", "").strip()
    if not token:
        sys.stderr.write(f"{PROG}: error: BRIDGE_CONTROL_TOKEN is not set\n")
        return 2
    body: dict[str, object] = {"to": args.to, "from": args.from_}
    pairs = [item.partition("=") for item in args.parameter]
    if any(not name or not sep for name, sep, _ in pairs):
        sys.stderr.write(f"{PROG}: error: --parameter takes NAME=VALUE\n")
        return 2
    if pairs:
        body["parameters"] = {name: value for name, _, value in pairs}
    if args.agent:
        body["agent"] = args.agent
    try:
        response = httpx.post(
            args.bridge.rstrip("/") + "/calls", json=body, timeout=args.timeout,
            headers={"Authorization": f"Bearer {token}"}, trust_env=False,
        )  # fmt: skip
    except httpx.HTTPError as exc:
        sys.stderr.write(f"{PROG}: error: cannot reach {args.bridge}: {type(exc).__name__}\n")
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {"status": response.status_code, "body": response.text[:200]}
    print(json.dumps(answer))
    return 0 if response.status_code == 201 else 1
