"""What the console and the mesh link share about a serial port: how it is opened, and what
is said when it cannot be.

A port that cannot be opened is the rig's problem, never the product's; the message names the
port and the remedy names the fix (dialout group, the process holding it, the cable).

A board on another lab host is reached over RFC 2217 (ser2net, as labgrid's exporter runs it).
pyserial's client has quirks there that this module absorbs once for every link: it refuses a
write timeout, it waits on answers ser2net may not give (SET_CONTROL: ``ign_set_control``, as
labgrid's own SerialDriver opens it), and its open() negotiates a purge whose acknowledgement
can time out on a busy or freshly started ser2net (labgrid issues #1396, #1779), so the
negotiation is retried a few times before it becomes the rig's error.
"""

from __future__ import annotations

import errno
import os
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import serial

try:  # tcdrain() (pyserial's flush) reports a vanished pty as termios.error, not OSError
    import termios

    PORT_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - Windows
    PORT_ERRORS = (serial.SerialException, OSError)


RFC2217_SCHEME = "rfc2217://"
# pyserial's per-negotiation wait (its default is 3 s); a loaded lab host answers slower.
RFC2217_NETWORK_TIMEOUT_S = 5.0
# How often a negotiation that timed out is tried again before the port counts as broken.
RFC2217_OPEN_ATTEMPTS = 3
_NEGOTIATION_RETRY_S = 0.2


def is_network(url: str) -> bool:
    """Whether the port is a network server (RFC 2217 or a raw socket), not a local device."""
    return url.startswith((RFC2217_SCHEME, "socket://"))


def network_url(url: str) -> str:
    """The URL pyserial is given: an RFC 2217 URL gets ``ign_set_control`` and a network
    timeout unless it names them itself; other URLs are unchanged."""
    if not url.startswith(RFC2217_SCHEME):
        return url
    options = parse_qs(urlsplit(url).query, keep_blank_values=True)
    extra = []
    if "ign_set_control" not in options:
        extra.append("ign_set_control")
    if "timeout" not in options:
        extra.append(f"timeout={RFC2217_NETWORK_TIMEOUT_S:g}")
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


def _negotiation_timeout(exc: BaseException) -> bool:
    return isinstance(exc, serial.SerialException) and "timeout while waiting for option" in str(
        exc
    )


def open_serial(url: str, options: dict[str, Any]) -> Any:
    """``serial_for_url``, retrying an RFC 2217 negotiation that timed out (ser2net may not
    acknowledge the open's purge in time); the last error is raised as pyserial gave it."""
    attempts = RFC2217_OPEN_ATTEMPTS if url.startswith(RFC2217_SCHEME) else 1
    for attempt in range(1, attempts + 1):
        try:
            return serial.serial_for_url(network_url(url), **options)
        except serial.SerialException as exc:
            if attempt == attempts or not _negotiation_timeout(exc):
                raise
            time.sleep(_NEGOTIATION_RETRY_S)
    raise AssertionError("unreachable")  # pragma: no cover


def timestamp() -> str:
    """Local wall-clock time, millisecond resolution, the prefix of every log line."""
    now = datetime.now()
    return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"


def open_failure(
    url: str, exc: BaseException, waited: float = 0.0, where: str = ""
) -> tuple[str, str]:
    """Turn a pyserial/OS error into (message, remedy) a person at the rig can act on;
    ``where`` (lab host and place of a remote board) goes into the message."""
    message, remedy = _open_failure(url, exc, waited)
    return (f"{message} [{where}]" if where else message), remedy


def dropped_remedy(url: str, where: str) -> str:
    """What to do when a network serial port drops mid-test: the lab host's side failed."""
    at = url.split("://", 1)[-1].split("?", 1)[0]
    place = where.rpartition("place ")[2] if "place " in where else ""
    show = f" (`labgrid-client -p {place} show` lists its resources)" if place else ""
    return (
        f"the serial server at {at} ({where or 'remote'}) closed the connection: check that "
        f"the lab host's labgrid-exporter and its ser2net are running{show} and that the "
        "board's serial port is still there, then rerun"
    )


def _open_failure(url: str, exc: BaseException, waited: float) -> tuple[str, str]:
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
    if _negotiation_timeout(exc):
        return (
            f"serial server {url} accepted the connection but did not finish the RFC 2217 "
            f"negotiation{after} ({exc}; tried {RFC2217_OPEN_ATTEMPTS} times)",
            "check the ser2net on the lab host (labgrid runs it as "
            "`telnet(rfc2217,mode=server)`); an old or overloaded ser2net does not answer "
            "pyserial's purge: restart the exporter, or add `?ign_set_control` / a longer "
            "`&timeout=` to the URL",
        )
    if is_network(url):
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
    if url.startswith(RFC2217_SCHEME):
        # pyserial's RFC 2217 client raises NotImplementedError on any write timeout; a write
        # there only queues on a socket, and a dead server shows as a dropped connection.
        options.pop("write_timeout", None)
    return options
