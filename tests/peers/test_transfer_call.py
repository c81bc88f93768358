"""The local agent's ``transfer_after_utterances`` through the real server, with the caller
simulator and the local Twilio REST peer: what the demo's second call relies on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from peers.agent import TRANSFER_TEXT, LocalAgent
from peers.audio import load_clip
from peers.caller import TwilioCaller
from peers.twilio_api import TwilioApiPeer, caller_connector
from tests.server_support import free_port, running_server

TOKEN = "tok-" + "tr4nsf3r" * 4
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
FRONT_DESK = "+15550123"


def transfer_bridge(port: int, agent: LocalAgent, env: dict[str, str]) -> Any:
    """``python -m server`` on ``port`` with the front desk as its one transfer target."""
    return running_server(
        "--port", str(port), "--public-url", f"http://127.0.0.1:{port}",
        "--records", "none", "--transfer-target", f"front_desk={FRONT_DESK}",
        agent=agent, env=env,
    )  # fmt: skip


def test_the_agent_transfers_on_turn_n_and_the_call_is_dialled_after_the_announcement() -> None:
    speed = 4

    async def main() -> None:
        port = free_port()
        agent = LocalAgent(transfer_after_utterances=1, pace=2 * speed, idle_timeout=30)
        peer = TwilioApiPeer(account_sid=ACCOUNT_SID, auth_token=TOKEN)
        echoes: list[float] = []
        async with agent, peer:
            env = {"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_URL": peer.url}
            async with transfer_bridge(port, agent, env):
                caller = TwilioCaller(
                    f"ws://127.0.0.1:{port}/media-stream", auth_token=TOKEN,
                    signed_url=f"wss://127.0.0.1:{port}/media-stream", speed=speed,
                    account_sid=ACCOUNT_SID, registry=peer,
                    on_mark=lambda name, t: echoes.append(t),
                )  # fmt: skip
                async with caller:
                    assert await caller.wait_agent_speaking(10)  # the greeting
                    assert await caller.wait_agent_silent(20, quiet=0.6)
                    heard_greeting = caller.bytes_received
                    await caller.play(load_clip("caller-hello"), "front desk")
                    assert await caller.wait_closed(15), "the update never ended the stream"
                # After the update, Twilio asks the dial's action URL what comes next.
                assert await peer.wait_until(lambda: bool(peer.callbacks), 5)
        session = agent.sessions[0]
        (response,) = session.function_call_responses
        assert response["name"] == "transfer_call" and json.loads(response["content"])["ok"]
        spoken = [m for m in session.sent_messages if m.get("role") == "assistant"]
        assert spoken[-1]["content"] == TRANSFER_TEXT
        updates = [r for r in peer.requests if r.path.endswith(f"/Calls/{caller.call_sid}.json")]
        (update,) = updates
        assert update.authenticated and f">{FRONT_DESK}</Dial>" in (update.field("Twiml") or "")
        # The whole announcement reached the caller and had played to its last mark by then.
        assert caller.bytes_received - heard_greeting == len(agent.transfer_audio)
        assert caller.marks_received == len(caller.marks_echoed)
        assert echoes and echoes[-1] < update.at
        assert caller.closed_by == "caller" and caller.figures().violations == ()
        (dial,) = peer.dials
        assert dial.targets == (FRONT_DESK,)

    asyncio.run(asyncio.wait_for(main(), 40))


def test_a_placed_call_whose_caller_speaks_is_transferred_by_the_agent() -> None:
    """``python -m peers.twilio_api --place-calls --connect-streams --caller-says CLIP``: the
    by-hand transfer of docs/call-control.md, with the call created on the peer directly."""

    async def main() -> None:
        port = free_port()
        agent = LocalAgent(transfer_after_utterances=1, idle_timeout=30)
        peer = TwilioApiPeer(account_sid=ACCOUNT_SID, auth_token=TOKEN, place_calls=True)
        peer.stream_connector = caller_connector(peer, says=load_clip("caller-hello"))
        async with agent, peer:
            env = {"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_URL": peer.url}
            async with transfer_bridge(port, agent, env):
                async with httpx.AsyncClient(trust_env=False) as client:
                    created = await client.post(
                        f"{peer.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json",
                        data={"To": "+15550100", "From": "+15550199",
                              "Url": f"http://127.0.0.1:{port}/incoming-call"},
                        auth=(ACCOUNT_SID, TOKEN),
                    )  # fmt: skip
                assert created.status_code == 201
                assert await peer.wait_until(lambda: bool(peer.dials), 30), peer.dump()
        (dial,) = peer.dials
        assert dial.targets == (FRONT_DESK,) and dial.call_sid == created.json()["sid"]
        (response,) = agent.sessions[0].function_call_responses
        assert response["name"] == "transfer_call"

    asyncio.run(asyncio.wait_for(main(), 45))
