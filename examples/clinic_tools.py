"""A clinic's tools: find the patient by the number calling, then book a slot.

Run with ``python -m server --tools examples.clinic_tools`` and declare ``lookup_patient``
and ``book_appointment`` in ``agent.think.functions`` (see docs/tools.md). The dicts stand in
for the clinic's own systems; a real handler would query them (in a thread if blocking).
"""

from __future__ import annotations

from typing import Any

from server.call_handle import CallHandle

PATIENTS = {"+15550001": {"patient_id": "P-1001", "name": "Ada Lovelace"}}
OPEN_SLOTS = {"tuesday 10:00", "tuesday 14:30", "friday 09:00"}
BOOKINGS: list[dict[str, str]] = []


def lookup_patient(args: dict[str, Any], call: CallHandle) -> dict[str, Any]:
    """The caller's record, found by ``From``; the agent learns the name through its prompt."""
    patient = PATIENTS.get(call.from_)
    if patient is None:
        return {"found": False}
    call.update_prompt(f"The caller is the patient {patient['name']} ({patient['patient_id']}).")
    return {"found": True, **patient}


def book_appointment(args: dict[str, Any], call: CallHandle) -> dict[str, Any]:
    """Book ``args["slot"]`` for the caller; the agent confirms it aloud at once."""
    patient = PATIENTS.get(call.from_)
    slot = str(args.get("slot", "")).lower()
    if patient is None:
        raise LookupError("no patient for this number")  # recorded as a failed tool call
    if slot not in OPEN_SLOTS:
        return {"booked": False, "open_slots": sorted(OPEN_SLOTS)}
    OPEN_SLOTS.discard(slot)
    BOOKINGS.append({"call_sid": call.call_sid, "patient_id": patient["patient_id"], "slot": slot})
    call.say(f"You're booked for {slot}, {patient['name']}.")
    return {"booked": True, "slot": slot}


TOOLS = {"lookup_patient": lookup_patient, "book_appointment": book_appointment}
