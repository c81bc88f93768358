"""Tools with the call in hand: the clinic example, loaded as ``--tools`` loads it, sees the
CallSid and From of the call, acts on the call through the core, and its results are recorded."""

from __future__ import annotations

import io
import json
from typing import Any

from server.records import cli as records_cli
from server.tools import ToolRegistry, takes_call
from tests.helpers import CALL_SID
from tests.server.test_records import spec as spec
from tests.server_support import caller, fake_agent, run, running_server, twilio_start, until


def _request(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    item = {"id": call_id, "name": name, "arguments": json.dumps(arguments), "client_side": True}
    return {"type": "FunctionCallRequest", "functions": [item]}


def test_one_and_two_argument_handlers_are_told_apart() -> None:
    def one(args: Any) -> str:
        return ""

    def two(args: Any, call: Any) -> str:
        return ""

    def keyword_only(args: Any, *, call: Any = None) -> str:
        return ""

    assert not takes_call(one) and takes_call(two) and not takes_call(keyword_only)
    assert takes_call(lambda *parts: "") and not takes_call(len)


def test_the_clinic_tools_see_the_caller_and_act_on_the_call(spec: str) -> None:
    import examples.clinic_tools as clinic

    async def body() -> dict[str, Any]:
        tools = ToolRegistry.load(["examples.clinic_tools"])
        async with (
            fake_agent() as agent,
            running_server("--records", spec, agent=agent, tools=tools) as server,
        ):
            ws = await caller(server)
            await ws.send(twilio_start({"From": "+15550001", "To": "+15550002"}))
            session = await agent.session()
            await until(lambda: session.applied_at is not None)
            await session.send(_request("t1", "lookup_patient", {}))
            await until(lambda: "FunctionCallResponse" in session.types(), what="the lookup")
            await session.send(_request("t2", "book_appointment", {"slot": "Friday 09:00"}))
            await session.send(_request("t3", "book_appointment", {"slot": "Friday 09:00"}))
            await until(lambda: session.types().count("FunctionCallResponse") == 3)
            texts = session.texts
            answers = {t["id"]: json.loads(t["content"]) for t in texts
                       if t["type"] == "FunctionCallResponse"}
            assert answers["t1"] == {"found": True, "patient_id": "P-1001", "name": "Ada Lovelace"}
            assert answers["t2"] == {"booked": True, "slot": "friday 09:00"}
            assert answers["t3"]["booked"] is False  # the slot is gone
            prompts = [t["prompt"] for t in texts if t["type"] == "UpdatePrompt"]
            assert prompts == ["The caller is the patient Ada Lovelace (P-1001)."]
            said = [t["message"] for t in texts if t["type"] == "InjectAgentMessage"]
            assert said == ["You're booked for friday 09:00, Ada Lovelace."]
            await ws.close()
            await until(lambda: not server.calls)
            assert server.records is not None and server.records.flush()
            return answers

    clinic.OPEN_SLOTS.add("friday 09:00")
    run(body())
    assert clinic.BOOKINGS[-1] == {
        "call_sid": CALL_SID, "patient_id": "P-1001", "slot": "friday 09:00"
    }
    out = io.StringIO()
    assert records_cli.main(["--records", spec, "show", CALL_SID, "--json"], out) == 0
    events = [e for e in json.loads(out.getvalue())["events"] if e["kind"] == "tool_call"]
    assert [(e["name"], e["data"]["ok"]) for e in events] == [
        ("lookup_patient", True), ("book_appointment", True), ("book_appointment", True)
    ]
    assert json.loads(events[1]["data"]["result"]) == {"booked": True, "slot": "friday 09:00"}


def test_a_failing_call_tool_is_recorded_as_an_error(spec: str) -> None:
    async def body() -> None:
        tools = ToolRegistry.load(["examples.clinic_tools"])
        async with (
            fake_agent() as agent,
            running_server("--records", spec, agent=agent, tools=tools) as server,
        ):
            ws = await caller(server)
            await ws.send(twilio_start({"From": "+15559999", "To": "+15550002"}))  # no such patient
            session = await agent.session()
            await until(lambda: session.applied_at is not None)
            await session.send(_request("t1", "book_appointment", {"slot": "tuesday 10:00"}))
            await until(lambda: "FunctionCallResponse" in session.types())
            await ws.close()
            await until(lambda: not server.calls)
            assert server.records is not None and server.records.flush()

    run(body())
    out = io.StringIO()
    assert records_cli.main(["--records", spec, "show", CALL_SID, "--json"], out) == 0
    (event,) = [e for e in json.loads(out.getvalue())["events"] if e["kind"] == "tool_call"]
    assert event["data"]["ok"] is False and "LookupError" in event["data"]["result"]
