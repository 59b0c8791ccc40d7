"""What the console and the mesh link share about a serial port: how it is opened, and what
is said when it cannot be.

A port that cannot be opened is the rig's problem, never the product's; the message names the
port and the remedy names the fix (dialout group, the process holding it, the cable).
"""

from __future__ import annotations

import errno
import os
from datetime import datetime
from typing import Any

import serial

try:  # tcdrain() (pyserial's flush) reports a vanished pty as termios.error, not OSError
    import termios

    PORT_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - Windows
    PORT_ERRORS = (serial.SerialException, OSError)


def timestamp() -> str:
    """Local wall-clock time, millisecond resolution, the prefix of every log line."""
    now = datetime.now()
    return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"


def open_failure(url: str, exc: BaseException, waited: float = 0.0) -> tuple[str, str]:
    """Turn a pyserial/OS error into (message, remedy) a person at the rig can act on."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        context = exc.__context__
        code = context.errno if isinstance(context, OSError) else None
    reason = str(exc)
    if isinstance(code, int) and code:
        reason = errno.errorcode.get(code, str(code)) + ": " + os.strerror(code)
    after = f" after retrying for {waited:.1f} s" if waited > 0 else ""
    path = url.split("://", 1)[-1]
    if isinstance(exc, ValueError):
        return (
            f"serial port {url!r} is not a valid port or URL ({exc})",
            "fix the port in boards.yaml: a device path such as /dev/serial/by-id/usb-SEGGER_J-"
            "Link_000682000000-if00, or a URL such as rfc2217://host:port or socket://host:port",
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied opening serial port {url}{after} ({reason})",
            "add your user to the dialout group: `sudo usermod -aG dialout $USER`, "
            "then log out and in again",
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in str(exc).lower():
        return (
            f"serial port {url} is busy: another process holds it{after} ({reason})",
            f"is another program holding it? (a `dfuhil console`, minicom, screen) find it with "
            f"`fuser {path}` (or `lsof {path}`) and stop it; a DFU/SMP tool "
            "that needs the port must run inside `console.released()`",
        )
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return (
            f"serial port {url} not found{after} ({reason})",
            "check the USB cable and that the board is powered; check the /dev/serial/by-id/... "
            "path in boards.yaml against `ls /dev/serial/by-id/`; for a virtual board, is "
            "`dfuhil sim serve` running?",
        )
    if url.startswith(("socket://", "rfc2217://")):
        return (
            f"serial server {url} is not reachable{after} ({exc})",
            "for a virtual board, is `dfuhil sim serve` running? for a remote rig, is the "
            "RFC 2217 server (e.g. ser2net) up and are host and port in boards.yaml right?",
        )
    return (
        f"cannot open serial port {url}{after} ({exc})",
        "check the USB cable, the port in boards.yaml and `dmesg | tail` for USB errors",
    )


def port_options(url: str, baud: int, rtscts: bool, timeout: float, **extra: Any) -> dict[str, Any]:
    """pyserial ``serial_for_url`` options; a local device is opened exclusively, because two
    programs reading one board's UART would each see half of its output."""
    options: dict[str, Any] = {"baudrate": baud, "rtscts": rtscts, "timeout": timeout, **extra}
    if "://" not in url:
        options["exclusive"] = True
    return options
