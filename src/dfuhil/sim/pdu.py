"""A virtual network PDU: labgrid's ``simplerest`` power switch protocol on 127.0.0.1, its
outlets wired to virtual boards' supply through their debug port levers (dfuhil.sim.faults).

labgrid's ``simplerest`` driver (labgrid/driver/power/simplerest.py, 26.0.1) fills the host URL
template with ``{index}`` and ``{value}``: ``GET .../relay/INDEX/1`` switches an outlet on,
``.../relay/INDEX/0`` off (any 2xx answer is success), and ``GET .../relay/INDEX`` (the template
with an empty value, trailing "/" stripped) answers the body ``1`` when on, anything else when
off. So boards.yaml describes this PDU exactly as it would a real one::

    power: {model: simplerest, host: "http://127.0.0.1:PORT/relay/{index}/{value}", index: 0}

It runs as its own process (``dfuhil sim pdu``), not inside ``dfuhil sim serve``: a PDU is a box
of its own on the lab network, so a test can stop it by its pid while the boards keep running
(the "PDU unreachable" case), and one can be wired to any farm that is already up. Switching an
outlet on that is already on changes nothing (a real relay does not reset the board then).
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from dfuhil.errors import DfuhilError, InputError
from dfuhil.farm.power import VirtualPower
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.state import load_state

PATH_TEMPLATE = "/relay/{index}/{value}"
_REQUEST_RE = re.compile(r"^/relay/(?P<index>\d+)(?:/(?P<value>[01]))?/?$")


class VirtualPdu:
    """An HTTP server on 127.0.0.1 speaking ``simplerest`` for ``outlets`` (index -> the virtual
    board's supply it switches)."""

    def __init__(self, outlets: dict[int, VirtualPower], port: int = 0) -> None:
        self.outlets = outlets
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(outlets))
        self.server.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """The ``host`` a NetworkPowerPort of model simplerest gives for this PDU."""
        return f"http://127.0.0.1:{self.port}{PATH_TEMPLATE}"

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.1)

    def start(self) -> threading.Thread:
        """Serve in a thread (tests); :meth:`close` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="virtual-pdu", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for outlet in self.outlets.values():
            outlet.close()


def _handler(outlets: dict[int, VirtualPower]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            match = _REQUEST_RE.match(self.path)
            if match is None:
                self._answer(404, f"no such request {self.path}; use {PATH_TEMPLATE}")
                return
            outlet = outlets.get(int(match["index"]))
            if outlet is None:
                self._answer(404, f"no outlet {match['index']}; outlets: {sorted(outlets)}")
                return
            try:
                if match["value"] is not None:
                    outlet.on() if match["value"] == "1" else outlet.off()
                    self._answer(200, match["value"])
                else:
                    self._answer(200, "1" if outlet.state() else "0")
            except DfuhilError as exc:  # the board's debug port is gone: the relay is stuck
                self._answer(502, f"outlet {match['index']} ({outlet.board}): {exc}")

        def _answer(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per request on stderr would drown the farm's own logs

    return Handler


def parse_outlets(specs: list[str], state_file: Path) -> dict[int, VirtualPower]:
    """``INDEX=BOARD`` pairs, each board looked up in the running farm's state file."""
    wiring: dict[int, str] = {}
    for spec in specs:
        index, sep, board = spec.partition("=")
        if not sep or not index.isdigit() or not board:
            raise InputError(f"--outlet {spec!r}: write INDEX=BOARD (e.g. 0=nrf52840-a)")
        if int(index) in wiring:
            raise InputError(f"--outlet {spec!r}: outlet {index} is wired twice")
        wiring[int(index)] = board
    state = load_state(state_file)
    outlets: dict[int, VirtualPower] = {}
    for outlet, board in wiring.items():
        entry = state.board(board)  # InfrastructureError naming the farm's boards
        outlets[outlet] = VirtualPower(board, FaultInjector(entry.endpoint, entry.snr))
    return outlets


def serve(outlets: dict[int, VirtualPower], port: int, url_file: Path | None) -> int:
    """Serve until SIGTERM/SIGINT; the URL template goes to stdout (and ``url_file``)."""
    pdu = VirtualPdu(outlets, port)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=pdu.server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if url_file is not None:
        partial = url_file.with_suffix(url_file.suffix + ".partial")
        partial.write_text(pdu.url + "\n")
        partial.replace(url_file)  # whoever waits for the file sees it whole
    print(pdu.url, flush=True)
    for index, outlet in sorted(outlets.items()):
        print(f"outlet {index}: {outlet.board}", file=sys.stderr, flush=True)
    try:
        pdu.serve_forever()
    finally:
        pdu.server.server_close()
        for outlet in outlets.values():
            outlet.close()
    return 0
