"""The playbook fails on an action out of order, a missing one and an unnamed one."""

from __future__ import annotations

import pytest

from sansio import CloseAgent, CloseTwilio, EndReason
from tests.core.playbook import Playbook, TwilioText, ended_with
from tests.helpers import Call, twilio_connected, twilio_stop

HANGUP = "hangup: the caller hung up (stop)"


def test_the_exact_order_passes() -> None:
    assert (
        Playbook(Call())
        << TwilioText(twilio_connected())
        << TwilioText(twilio_stop())
        >> ended_with(EndReason.HANGUP)
        >> CloseTwilio
    )


@pytest.mark.parametrize(
    ("expected", "error"),
    [
        ([CloseTwilio(1000, HANGUP), ended_with(EndReason.HANGUP)], "expected CloseTwilio"),
        ([ended_with(EndReason.HANGUP)], "unexpected action CloseTwilio"),
        ([ended_with(EndReason.HANGUP), CloseTwilio, CloseAgent], "no action is left"),
    ],
)
def test_order_missing_and_unnamed_actions_fail(expected: list[object], error: str) -> None:
    book = Playbook(Call()) << TwilioText(twilio_connected()) << TwilioText(twilio_stop())
    for step in expected:
        book = book >> step
    with pytest.raises(AssertionError, match=error):
        bool(book)
