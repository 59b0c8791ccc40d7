"""The virtual debug port's framing: length-prefixed JSON (4-byte big-endian length), bytes as
base64. Kept apart from the server so a client (pynrfjprog's stand-in, the fake ``nrfutil``)
starts without importing the whole virtual board.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any

LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024

# pynrfjprog error codes the virtual port answers with (pynrfjprog.APIError.NrfjprogdllErr).
INVALID_OPERATION = -2
INVALID_PARAMETER = -3
EMULATOR_NOT_CONNECTED = -10
NVMC_ERROR = -20
JLINKARM_DLL_ERROR = -102


class PortError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_bytes(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def decode_bytes(value: dict[str, str]) -> bytes:
    return base64.b64decode(value["b64"])


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    payload = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(LENGTH.pack(len(payload)) + payload)


def recv_message(sock: socket.socket) -> dict[str, Any] | None:
    head = _recv_exact(sock, LENGTH.size)
    if head is None:
        return None
    (length,) = LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        raise PortError(INVALID_PARAMETER, f"debug port message of {length} bytes is too large")
    body = _recv_exact(sock, length)
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


CONNECT_TIMEOUT_S = 5.0  # a lab host that does not answer must not hang the run


def debug_port_address(endpoint: str) -> str | tuple[str, int]:
    """Where a debug port endpoint points: ``unix:PATH`` (the local farm) gives the path;
    ``tcp:HOST:PORT`` or ``HOST:PORT`` (a farm on a lab host, its ``debug_tcp``) gives
    ``(host, port)``. Anything else is a ValueError naming the forms it takes."""
    if endpoint.startswith("unix:"):
        return endpoint.removeprefix("unix:")
    host, sep, port = endpoint.removeprefix("tcp:").rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return host.strip("[]"), int(port)
    raise ValueError(
        f"unsupported virtual debug port endpoint {endpoint!r} "
        "(unix:PATH, tcp:HOST:PORT or HOST:PORT)"
    )


def connect_debug_port(address: str | tuple[str, int]) -> socket.socket:
    """A connected socket to a debug port (OSError when it is not there)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(address)
        sock.settimeout(None)
        if family == socket.AF_INET:  # one small frame per request: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock
