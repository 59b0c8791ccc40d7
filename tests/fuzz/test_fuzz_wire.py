"""Bytes from a hostile or broken device: dfuhil's decoders and hosts end every exchange in a
result or a named error, never a traceback, never a hang (bounded, deterministic budget).

The explicit examples are device behaviours that crashed or hung the host before its fix: an
answer whose CBOR is not a map, that does not decode, nests 5000 deep or answers another op;
a server that answers every upload chunk with the same offset (the host sent forever); a
server that claims a buffer no serial frame can fill.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fuzz_harness import check, fuzz_test
from fuzz_wire import TARGETS, TID, run_mesh_host, run_smp_host


def _fuzz(name: str, max_examples: int, *examples: Any) -> Callable[[], None]:
    return fuzz_test(TARGETS[name], max_examples, *examples)


test_smp_serial_frames = _fuzz("smp serial frames", 50)
test_smp_answers = _fuzz(
    "smp answers (host over pty)",
    10,
    [("value", b"\x01\x02")],  # a byte string, not a map: TypeError in smpclient
    [("value", 7)],
    [("raw", b"\xff\xff")],  # not CBOR: CBORDecodeError
    [("deep", None)],  # nested 5000 deep
    [("header", ("op", 0))],  # answers with a request op
    [("header", ("version", 3))],  # a version smp's header cannot read: ValueError
    [("stuck", 100)],  # never takes the data: the upload looped forever
)
test_smp_answers_cli = _fuzz("smp answers (cli)", 8, [("value", [1, 2])], [("silent", None)])
test_mesh_serial_frames = _fuzz("mesh serial frames", 60)
test_mesh_host = _fuzz("mesh serial (host over pty)", 6)


def test_a_server_claiming_a_4_gib_buffer_gets_messages_a_serial_frame_can_carry() -> None:
    """MCUmgr params said buf_size 0xFFFFFFFF: a 100 KB upload became one message too long for
    the SMP header's u16 length (struct.error) before the serial transport capped the size."""
    check(run_smp_host([("params", (0xFFFFFFFF, 4))], image=bytes(100_000)))


def test_a_node_that_requests_the_same_segment_after_every_frame_does_not_hold_the_host() -> None:
    """Found by `make fuzz`: the host served queued DATA_REQs until the queue was empty, and a
    node that asks again after every frame kept it there for good."""
    request = bytes([0x09, 0x78, 0xFB, 0xFF, 0x01, 0x00]) + TID.to_bytes(4, "little")
    check(run_mesh_host([("request", request)], seconds=5))
