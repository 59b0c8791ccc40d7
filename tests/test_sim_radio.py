"""The virtual farm's radio medium: who hears whom, loss, airtime, and the debug port's view.

The medium carries opaque bytes, so it is tested in-process with plain packets first; the
``sim_radio`` debug port extension is then checked against a farm in its own process, the way a
test rig reaches it (VirtualLowLevelAPI and Probe.extension).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from simfarm import RunningFarm, SimBoard, running_farm

from dfuhil.farm.model import RadioSpec
from dfuhil.sim.clock import ResetSignal, VirtualClock
from dfuhil.sim.radio import RX_QUEUE_LENGTH, RadioMedium, RadioPort, airtime

SCALE = 0.01  # wall seconds per device second


OPEN_AIR = RadioSpec()  # everyone hears everyone, no loss


def medium(spec: RadioSpec = OPEN_AIR, *names: str) -> tuple[RadioMedium, list[RadioPort]]:
    air = RadioMedium(spec, VirtualClock(SCALE))
    ports = [air.port(name) for name in names or ("a", "b", "c")]
    return air, ports


def listen(*ports: RadioPort) -> None:
    """Turn the receivers on (firmware does it by reading the radio once)."""
    for port in ports:
        assert port.receive(0, threading.Event()) is None


def drain(port: RadioPort, timeout_s: float = 0.1) -> list[bytes]:
    got: list[bytes] = []
    while (packet := port.receive(timeout_s, threading.Event())) is not None:
        got.append(packet)
    return got


def test_every_listening_neighbour_gets_the_packet_but_not_the_sender() -> None:
    _, (a, b, c) = medium()
    listen(a, b, c)
    a.send(b"\xfc\xff hello")
    assert drain(b) == [b"\xfc\xff hello"]
    assert drain(c) == [b"\xfc\xff hello"]
    assert drain(a, 0.01) == []


def test_a_radio_that_is_not_listening_hears_nothing() -> None:
    air, (a, b, c) = medium()
    listen(a, b)
    a.send(b"one")
    listen(c)
    assert drain(c, 0.01) == []
    assert air.stats()["c"] == {"sent": 0, "delivered": 0, "lost": 0, "overflow": 0}


def test_neighbour_table_limits_who_hears_whom_in_both_directions() -> None:
    spec = RadioSpec(neighbours=(("a", ("b",)), ("b", ("c",))))
    _, (a, b, c) = medium(spec)
    listen(a, b, c)
    a.send(b"from a")
    c.send(b"from c")
    assert sorted(drain(b)) == [b"from a", b"from c"]
    assert drain(a, 0.01) == []  # a does not hear c
    assert drain(c, 0.01) == []  # c does not hear a


def test_loss_drops_about_the_configured_share_per_receiver_and_counts_it() -> None:
    air, (a, b) = medium(RadioSpec(loss=0.3, seed=7), "a", "b")
    listen(a, b)
    received: list[bytes] = []
    for i in range(400):
        a.send(i.to_bytes(2, "little"))
        if i % 16 == 15:  # read as we go: the receive queue holds 32
            received += drain(b, 0.02)
    received += drain(b)
    stats = air.stats()
    assert stats["b"]["overflow"] == 0
    assert stats["a"]["sent"] == 400
    assert stats["b"]["delivered"] + stats["b"]["lost"] == 400
    assert len(received) == stats["b"]["delivered"]
    assert 0.2 < stats["b"]["lost"] / 400 < 0.4


def test_loss_can_change_while_running() -> None:
    air, (a, b) = medium(RadioSpec(loss=0.0), "a", "b")
    listen(a, b)
    air.set_loss(1.0)
    a.send(b"gone")
    assert drain(b, 0.01) == []
    air.set_loss(0.0)
    a.send(b"here")
    assert drain(b) == [b"here"]
    assert air.describe() == {"loss": 0.0, "stats": air.stats()}
    with pytest.raises(ValueError, match="between 0 and 1"):
        air.set_loss(1.5)


def test_a_busy_radio_sends_its_packets_one_after_the_other() -> None:
    air, (a, b) = medium(OPEN_AIR, "a", "b")
    listen(a, b)
    packet = bytes(24)
    before = air.clock.now()
    for _ in range(3):
        a.send(packet)
    # Three bursts back to back: the third ends no earlier than three airtimes from now.
    assert a.busy_until >= before + 3 * airtime(len(packet))
    assert len(drain(b)) == 3


def test_airtime_is_three_advertising_channels_at_one_megabit() -> None:
    # 24-byte DATA: (24 + 20) bytes x 8 us + 140 us ramp-up, on 3 channels.
    assert airtime(24) == pytest.approx(3 * (140e-6 + 44 * 8e-6))


def test_receive_times_out_and_a_reset_turns_the_receiver_off() -> None:
    _, (a, b) = medium(OPEN_AIR, "a", "b")
    listen(a, b)
    assert b.receive(0.05, threading.Event()) is None
    a.send(b"before reset")
    b.reset()
    assert not b.listening
    assert drain(b, 0.01) == []


def test_receive_unwinds_when_the_cpu_is_reset() -> None:
    _, (b,) = medium(OPEN_AIR, "b")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ResetSignal):
        b.receive(None, cancel)


def test_a_full_receive_queue_drops_and_counts() -> None:
    air, (a, b) = medium(OPEN_AIR, "a", "b")
    listen(a, b)
    for i in range(RX_QUEUE_LENGTH + 5):
        a.send(bytes([i]))
    assert air.stats()["b"]["overflow"] == 5
    assert len(drain(b)) == RX_QUEUE_LENGTH


# --- through the debug port of a farm process ----------------------------------------------------


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    boards = [
        SimBoard("radio-a", "nRF52832_xxAA", "PCA10040", 930000001),
        SimBoard("radio-b", "nRF52840_xxAA", "PCA10056", 930000002),
    ]
    with running_farm(tmp_path_factory.mktemp("sim-radio"), boards) as running:
        yield running


def test_sim_radio_sets_loss_and_reports_every_board(farm: RunningFarm) -> None:
    with farm.api("radio-a") as api:
        first = api.sim_radio()
        assert first["loss"] == 0.0
        assert set(first["stats"]) == {"radio-a", "radio-b"}
        assert api.sim_radio(loss=0.25)["loss"] == 0.25
    with farm.api("radio-b") as api:
        assert api.sim_radio()["loss"] == 0.25  # one medium for the whole farm
        assert api.sim_radio(0)["loss"] == 0.0
        with pytest.raises(ValueError, match="loss"):
            api.sim_radio(loss=2)
