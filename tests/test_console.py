"""Console against real pseudo-terminals: the test writes to the master fd as "the device"."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import socket
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial

from dfuhil.errors import InfrastructureError
from dfuhil.links.console import Console, ExpectTimeout, UnexpectedOutput, follow

TS = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] "


@dataclass
class Pty:
    master: int
    slave: int
    path: str

    def send(self, data: bytes) -> None:
        os.write(self.master, data)


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF translation: the bytes arrive as the device sent them
    yield Pty(master, slave, os.ttyname(slave))
    for fd in (master, slave):
        with contextlib.suppress(OSError):  # a test closed the master to make the port vanish
            os.close(fd)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Upper bound only: passes as soon as the predicate holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def no_console_threads() -> bool:
    return not any(t.name.startswith("console-") for t in threading.enumerate())


def test_early_lines_are_kept(pty: Pty) -> None:
    with Console(pty.path, name="b1") as console:
        pty.send(b"*** Booting Zephyr OS ***\r\nblinky 1 started\r\n")
        wait_until(lambda: "started" in console.text())
        assert console.expect_exact("*** Booting Zephyr OS ***") == "*** Booting Zephyr OS ***"
        assert console.expect(r"blinky \d+ started").group(0) == "blinky 1 started"


def test_expect_returns_groups_and_advances_cursor(pty: Pty) -> None:
    with Console(pty.path, name="b1") as console:
        pty.send(b"blinky 3 started\r\nblinky 4 started\r\n")
        first = console.expect(r"blinky (\d+) started", timeout=10)
        assert first.group(1) == "3"
        assert console.expect(r"^blinky (\d+) started$", timeout=10).group(1) == "4"
        wait_until(lambda: console.unread() == "\n")
        console.skip_to_end()
        assert console.unread() == ""
        with pytest.raises(ExpectTimeout):
            console.expect(r"blinky", timeout=0.2)
        assert console.text() == "blinky 3 started\nblinky 4 started\n"


def test_line_endings_and_utf8_split_across_reads(pty: Pty) -> None:
    with Console(pty.path) as console:
        pty.send(b"one\r")
        wait_until(lambda: "one" in console.text())
        pty.send(b"\ntwo\rthree\r\n\xc3")
        wait_until(lambda: "three" in console.text())
        pty.send(b"\xa9t\xe9\n")
        console.expect_exact("t\ufffd\n")
        assert console.text() == "one\ntwo\nthree\n\u00e9t\ufffd\n"


def test_expect_timeout_shows_unread_tail_and_log(pty: Pty, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "vdk52832-a.log"
    with Console(pty.path, name="vdk52832-a", log_path=log) as console:
        pty.send(b"".join(b"line %02d\r\n" % i for i in range(50)))
        console.expect("line 03")
        with pytest.raises(ExpectTimeout) as info:
            console.expect(r"blinky \d+ started", timeout=0.3)
    message = str(info.value)
    assert message.startswith(r"console vdk52832-a: no match for 'blinky \d+ started' within 0.3 s")
    assert "--- unread output (last 40 lines) ---" in message
    assert "line 49" in message and "line 10" in message
    assert "line 09" not in message
    assert f"--- full log: {log} ---" in message


def test_expect_timeout_when_nothing_received(pty: Pty) -> None:
    with (
        Console(pty.path, name="quiet", baud=115200) as console,
        pytest.raises(ExpectTimeout) as info,
    ):
        console.expect("anything", timeout=0.2)
    assert "nothing was received (is the board powered, is the baud rate 115200 right?)" in str(
        info.value
    )


def test_not_matching_before_the_wanted_line(pty: Pty) -> None:
    with Console(pty.path, name="b1") as console:
        pty.send(b"booting\r\nHARD FAULT at 0x1234\r\nready\r\n")
        wait_until(lambda: "ready" in console.text())
        with pytest.raises(UnexpectedOutput) as info:
            console.expect("ready", not_matching=[r"FAULT", re.compile("panic")])
        assert "'FAULT'" in str(info.value)
        assert "HARD FAULT at 0x1234" in str(info.value)


def test_not_matching_after_the_wanted_line_is_fine(pty: Pty) -> None:
    with Console(pty.path) as console:
        pty.send(b"ready\r\nFAULT later\r\n")
        wait_until(lambda: "later" in console.text())
        assert console.expect("ready", not_matching=["FAULT"]).group(0) == "ready"


def test_not_matching_while_waiting(pty: Pty) -> None:
    with Console(pty.path) as console:
        pty.send(b"booting\r\n")
        timer = threading.Timer(0.1, pty.send, args=(b"panic: oops\r\n",))
        timer.start()
        try:
            # Raises UnexpectedOutput as soon as the panic arrives, not ExpectTimeout.
            with pytest.raises(UnexpectedOutput, match="panic: oops"):
                console.expect("ready", timeout=30, not_matching=["panic"])
        finally:
            timer.join()


def test_log_file_format(pty: Pty, tmp_path: Path) -> None:
    log = tmp_path / "a" / "b" / "board.log"
    with Console(pty.path, name="b1", log_path=log) as console:
        pty.send(b"hello\r\nworld\r\npartial")
        wait_until(lambda: "partial" in console.text())
        console.writeline("version")
        assert os.read(pty.master, 100) == b"version\r\n"
    lines = log.read_text(encoding="utf-8").splitlines()
    assert all(re.match(TS, line) for line in lines), lines
    bodies = [re.sub("^" + TS, "", line) for line in lines]
    assert bodies[0].startswith("--- opened ")
    assert bodies[1:3] == ["hello", "world"]
    assert ">> version" in bodies
    assert bodies.index("partial") > bodies.index(">> version")  # written on close
    assert bodies[-1] == "--- closed ---"


def test_released_lets_another_tool_use_the_port(pty: Pty, tmp_path: Path) -> None:
    log = tmp_path / "board.log"
    with Console(pty.path, name="b1", log_path=log) as console:
        pty.send(b"before\r\n")
        console.expect("before")
        with console.released():
            assert not console.is_open
            other = serial.Serial(pty.path, timeout=1, exclusive=True)  # the DFU tool
            pty.send(b"dfu reply\r\n")
            assert other.readline() == b"dfu reply\r\n"
            other.close()
        assert console.is_open
        pty.send(b"after\r\n")
        console.expect("after")
        assert "dfu reply" not in console.text()
    bodies = [re.sub("^" + TS, "", line) for line in log.read_text().splitlines()]
    released = bodies.index("--- port released to another tool ---")
    assert bodies.index("before") < released < bodies.index("--- port reclaimed ---")
    assert bodies.index("--- port reclaimed ---") < bodies.index("after")


def test_second_console_on_a_held_port_is_busy(pty: Pty) -> None:
    with Console(pty.path, name="b1"), pytest.raises(InfrastructureError) as info:
        Console(pty.path, name="b1").open()
    assert "busy" in str(info.value)
    assert f"fuser {pty.path}" in info.value.remedy


def test_missing_port_gives_remedy_not_pyserial_error() -> None:
    console = Console("/dev/serial/by-id/usb-nothing-here-if00", name="vdk52832-a")
    with pytest.raises(InfrastructureError) as info:
        console.open()
    error = info.value
    assert not isinstance(error, serial.SerialException)
    assert error.__cause__ is None and error.__suppress_context__
    assert error.board == "vdk52832-a"
    assert "not found" in str(error)
    assert "/dev/serial/by-id" in error.remedy and "dfuhil sim serve" in error.remedy
    assert not console.is_open
    console.close()


def test_open_retries_until_the_port_appears(pty: Pty, tmp_path: Path) -> None:
    link = tmp_path / "ttyACM0"
    timer = threading.Timer(0.3, link.symlink_to, args=(pty.path,))
    timer.start()
    try:
        with Console(str(link), open_timeout=30) as console:
            pty.send(b"re-enumerated\r\n")
            console.expect("re-enumerated")
    finally:
        timer.join()


def test_open_retries_then_reports(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="after retrying"):
        Console(str(tmp_path / "ttyACM9"), open_timeout=0.2).open()


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EACCES, ["permission denied", "dialout", "sudo usermod -aG dialout $USER"]),
        (errno.EBUSY, ["busy", "fuser /dev/ttyACM0"]),
    ],
)
def test_open_error_remedies(monkeypatch: pytest.MonkeyPatch, code: int, words: list[str]) -> None:
    def refuse(url: str, **kwargs: object) -> None:
        raise serial.SerialException(code, f"could not open port {url}: {os.strerror(code)}")

    monkeypatch.setattr(serial, "serial_for_url", refuse)
    with pytest.raises(InfrastructureError) as info:
        Console("/dev/ttyACM0", name="b1").open()
    text = str(info.value)
    assert all(word in text for word in words), text
    assert info.value.__cause__ is None


def test_socket_server_not_running() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InfrastructureError) as info:
        Console(f"socket://127.0.0.1:{port}", name="vdk").open()
    assert "not reachable" in str(info.value)
    assert "dfuhil sim serve" in info.value.remedy


def test_port_vanishing_is_infrastructure_not_timeout(pty: Pty) -> None:
    with Console(pty.path, name="b1") as console:
        pty.send(b"hello\r\n")
        console.expect("hello")
        os.close(pty.master)
        with pytest.raises(InfrastructureError, match="vanished"):
            console.expect("more", timeout=30)
        assert not console.is_open
        with pytest.raises(InfrastructureError, match="vanished"):
            console.writeline("help")
    assert no_console_threads()


def test_port_vanishing_wakes_a_waiting_expect(pty: Pty) -> None:
    with Console(pty.path, name="b1") as console:
        timer = threading.Timer(0.2, os.close, args=(pty.master,))
        timer.start()
        try:
            with pytest.raises(InfrastructureError, match="vanished"):
                console.expect("never printed", timeout=30)
        finally:
            timer.join()


def test_close_twice_and_no_thread_left(pty: Pty) -> None:
    console = Console(pty.path)
    console.open()
    assert console.is_open
    console.close()
    console.close()
    assert not console.is_open
    assert no_console_threads()
    with pytest.raises(RuntimeError):
        console.write(b"x")


def test_follow_prints_until_stopped(pty: Pty) -> None:
    out = io.StringIO()
    stop = threading.Event()
    with Console(pty.path) as console:
        pty.send(b"early\r\n")
        wait_until(lambda: "early" in console.text())
        worker = threading.Thread(target=follow, args=(console, out, stop))
        worker.start()
        try:
            pty.send(b"uart:~$ ")
            wait_until(lambda: "uart:~$ " in out.getvalue())
        finally:
            stop.set()
            worker.join(timeout=10)
        assert not worker.is_alive()
    assert out.getvalue() == "early\nuart:~$ "


def test_mesh_serial_console_renders_one_line_per_frame(pty: Pty, tmp_path: Path) -> None:
    """A binary-protocol board: expect() and the log see frames, not mojibake."""
    log = tmp_path / "b1.log"
    with Console(pty.path, name="b1", protocol="mesh-serial", log_path=log) as console:
        # DEVICE_STARTED (application), then an echo answer split across two writes.
        pty.send(bytes.fromhex("04 81 02 00 04 05 82 AA"))
        pty.send(bytes.fromhex("BB CC DD"))
        console.expect(r"DEVICE_STARTED mode=APPLICATION hw_error=0 credit=4\n")
        console.expect_exact("ECHO_RSP AA BB CC DD\n")
    assert "DEVICE_STARTED mode=APPLICATION" in log.read_text()


def test_unknown_console_protocol_is_refused(pty: Pty) -> None:
    with pytest.raises(ValueError, match="mesh-serial"):
        Console(pty.path, protocol="slip")
