"""The agent leg's own framing of data frames (server/ws.py: encode_client_frame, MaskPool)."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from server.ws import MaskPool, encode_client_frame


def _parsed(data: bytes) -> list[Frame]:
    """What a real server (websockets' own parser) reads from ``data``."""
    server = ServerProtocol(max_size=None)
    server.state = State.OPEN
    server.parser = server.parse()
    next(server.parser)
    server.receive_data(data)
    return [event for event in server.events_received() if isinstance(event, Frame)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_every_length_form_parses_as_the_same_masked_message(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    mask = b"\x01\x80\xfe\x37"
    [binary] = _parsed(encode_client_frame(0x2, payload, mask))
    assert (binary.opcode, binary.fin, binary.data) == (Opcode.BINARY, True, payload)
    text = ("é" * size)[:size].encode()
    [frame] = _parsed(encode_client_frame(0x1, text, mask))
    assert (frame.opcode, frame.data) == (Opcode.TEXT, text)


def test_the_mask_bit_and_the_key_are_on_the_wire() -> None:
    data = encode_client_frame(0x2, b"abcd", b"\x00\x00\x00\x00")
    assert data[1] & 0x80  # the MASK bit
    assert data[2:6] == b"\x00\x00\x00\x00" and data[6:] == b"abcd"


def test_the_pool_gives_fresh_keys_and_refills() -> None:
    pool = MaskPool(batch=4)
    keys = [pool.take() for _ in range(12)]  # three batches
    assert all(len(key) == 4 for key in keys)
    assert len(set(keys)) > 8  # random keys: a repeat among 12 is a 1 in ~10^8 event


def test_a_forked_worker_never_reuses_the_parents_keys() -> None:
    from server.ws import MASKS

    MASKS.take()  # the parent holds a batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first key, to the parent
        os.write(write, MASKS.take())
        os._exit(0)
    os.close(write)
    child_key = os.read(read, 4)
    os.close(read)
    os.waitpid(pid, 0)
    assert child_key != MASKS.take()  # the parent's next key from the same batch
