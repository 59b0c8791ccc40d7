"""The probe over ``nrfutil device``: the same :class:`Probe` interface, one subprocess a call.

nRF Util has no Python API; every operation is a process start (hundreds of milliseconds on a
lab PC). So this backend batches: inside :meth:`NrfutilProbe.read_ahead` (provisioning opens
one), the ranges named are read in one ``batch-execute`` together with the FICR words that
identify the chip, erases and writes are queued, and the queue runs as one batch the next time a
read needs the device or when the scope ends. Pages that were erased or written are read back in
that same batch, so a verify is a real read-back after the writes, never a cached copy. Outside
a read-ahead scope every call runs at once. The cache dies with the scope and with any reset,
halt or go: firmware that runs may change its flash.

The chip is checked against boards.yaml before anything is written: from FICR (code page size,
code size, INFO.PART on nRF52) in the first batch when that batch only reads, else by
``device-info``. ``recover`` (a mass erase of a protected chip) only runs where the board has
``allow_recover: true``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from intelhex import IntelHex

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.formats.chips import (
    FICR_BASE,
    FICR_CODEPAGESIZE,
    FICR_CODESIZE,
    FICR_INFO_PART,
    UICR_BASE,
)
from dfuhil.links.nrfutil_cli import NrfutilCommand
from dfuhil.links.probe import ApiFactory, LowLevelLike, Probe, ProbeTarget

FICR_SPAN = (FICR_BASE, 0x120)  # up to INFO.FLASH: enough to tell the chip
FAMILIES = {"NRF51": "NRF51_FAMILY", "NRF52": "NRF52_FAMILY"}


class NrfutilProbe(Probe):
    """An nrfutil-driven session to one board; ``extras`` reaches the virtual farm's sim_ calls."""

    def __init__(
        self,
        target: ProbeTarget,
        command: NrfutilCommand,
        *,
        time_scale: float = 1.0,
        extras: ApiFactory | None = None,
    ) -> None:
        super().__init__(target, extras or _no_extras, time_scale=time_scale)
        self.command = command
        self._extras = extras
        self._extras_api: LowLevelLike | None = None
        self._open = False
        self._identified = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._files = 0
        self._queue: list[dict[str, Any]] = []
        self._cache: dict[int, bytes] | None = None  # page -> bytes, while reading ahead
        self._dirty: set[int] = set()

    # --- session ------------------------------------------------------------------------------

    def open(self) -> NrfutilProbe:
        self.command.check_version()
        self._tmp = tempfile.TemporaryDirectory(prefix="dfuhil-nrfutil-")
        self._open = True
        return self

    def close(self) -> None:
        try:
            if self._open and self._queue:
                self._flush([])
        finally:
            self._open = False
            self._cache = None
            if self._extras_api is not None:
                self._extras_api.close()
                self._extras_api = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __enter__(self) -> NrfutilProbe:
        return self.open()

    @property
    def page_size(self) -> int:
        return self.chip.page_size

    def _select(self) -> list[str]:
        args = ["--serial-number", str(self.target.snr)]
        if self.target.ip is not None:
            args += ["--remote-jlink", self.target.remote or self.target.ip]
        return args

    def _run(self, args: Sequence[str]) -> list[dict[str, Any]]:
        if not self._open:
            raise InfrastructureError(
                f"probe for board {self.board} is not open", "open it first (with rig.probe(b))"
            )
        output = self.command.run([*args, *self._select()], board=self.board)
        return [t.data for t in output.tasks]

    def _path(self, suffix: str) -> Path:
        assert self._tmp is not None
        self._files += 1
        return Path(self._tmp.name) / f"{self._files}{suffix}"

    # --- identity -----------------------------------------------------------------------------

    def _identify_by_device_info(self) -> None:
        found = self._run(["device-info"])
        data = found[-1] if found else {}
        jlink = data.get("deviceInfo", {}).get("jlink", {})
        family = str(jlink.get("deviceFamily", ""))
        version = str(jlink.get("deviceVersion", ""))
        want = FAMILIES.get(self.chip.family, self.chip.family)
        if family != want:
            raise self._wrong_chip(f"{family} ({version})")
        self._check_chip(version)
        self._identified = True

    def _check_ficr(self, ficr: bytes) -> None:
        def word(address: int) -> int:
            offset = address - FICR_BASE
            return int.from_bytes(ficr[offset : offset + 4], "little")

        chip = self.chip
        page, pages = word(FICR_CODEPAGESIZE), word(FICR_CODESIZE)
        seen = f"a chip with {pages} pages of {page} bytes"
        if chip.family != "NRF51":
            seen += f", INFO.PART 0x{word(FICR_INFO_PART):X}"
        if (page, pages) != (chip.page_size, chip.pages) or (
            chip.family != "NRF51" and word(FICR_INFO_PART) != chip.part
        ):
            raise self._wrong_chip(seen)
        self._identified = True

    def _wrong_chip(self, seen: str) -> InfrastructureError:
        return InfrastructureError(
            f"boards.yaml says {self.chip.name}, but J-Link {self.target.snr} reaches {seen}",
            "correct the board's chip in boards.yaml, or check the probe is wired to the "
            "right board",
            board=self.board,
        )

    # --- batches ------------------------------------------------------------------------------

    def _read_op(self, address: int, length: int) -> tuple[dict[str, Any], Path]:
        path = self._path(".hex")
        op = {"type": "read", "address": address, "bytes": length, "toFile": str(path)}
        return op, path

    def _flush(self, reads: Sequence[tuple[int, int]]) -> list[bytes]:
        """Run the queue plus ``reads`` (address, length) as one process; return what was read.

        A batch that writes runs only on an identified chip; one that only reads carries the
        FICR words that identify it.
        """
        queue, self._queue = self._queue, []
        ficr = not self._identified and not queue
        if queue and not self._identified:
            self._identify_by_device_info()
        wanted = [*([FICR_SPAN] if ficr else []), *reads]
        ops = list(queue)
        files = []
        for address, length in wanted:
            op, path = self._read_op(address, length)
            ops.append(op)
            files.append((address, length, path))
        if len(ops) == 1 and not queue:
            (op,) = ops
            self._run(_read_args(op))
        else:
            self._batch(ops)
        data = [_load(path, address, length) for address, length, path in files]
        if ficr:
            self._check_ficr(data.pop(0))
        return data

    def _batch(self, ops: list[dict[str, Any]]) -> None:
        assert self.command.version is not None
        batch = {
            "nrfutil_device_version": ".".join(str(v) for v in self.command.version),
            "operations": [
                {"operationId": str(i), "operation": op, "core": "Application"}
                for i, op in enumerate(ops, start=1)
            ],
        }
        path = self._path(".json")
        path.write_text(json.dumps(batch, indent=2) + "\n")
        self._run(["batch-execute", "--batch-file", str(path)])

    def _submit(self, op: dict[str, Any], touched: Iterable[int] = ()) -> None:
        """Queue ``op`` while reading ahead, else run it now (after identifying the chip)."""
        pages = set(touched)
        if self._cache is None:
            if not self._identified:
                self._identify_by_device_info()
            self._queue.append(op)
            self._flush([])
            return
        self._queue.append(op)
        for page in pages:
            self._cache.pop(page, None)
        self._dirty |= pages

    def _pages(self, address: int, length: int) -> list[int]:
        if address >= UICR_BASE and address < UICR_BASE + self.chip.uicr_size:
            return [UICR_BASE]
        size = self.page_size
        return list(range(address - address % size, address + max(length, 1), size))

    def _page_span(self, page: int) -> tuple[int, int]:
        return (page, self.chip.uicr_size if page == UICR_BASE else self.page_size)

    # --- read-ahead ---------------------------------------------------------------------------

    @contextmanager
    def read_ahead(self, ranges: Sequence[tuple[int, int]]) -> Iterator[None]:
        """Read ``ranges`` (address, length) in one process, and batch what follows."""
        if self._cache is not None:
            yield
            return
        spans = [(a, n) for a, n in ranges if n > 0]
        data = self._flush(spans)
        self._cache = {}
        for (address, _), content in zip(spans, data, strict=True):
            self._fill(address, content)
        try:
            yield
            if self._queue:
                self._flush([])
        finally:
            self._cache = None
            self._dirty.clear()
            self._queue.clear()

    def _fill(self, address: int, content: bytes) -> None:
        """Keep whole pages of code flash and UICR (RAM and registers change under a reader)."""
        assert self._cache is not None
        for page in self._pages(address, len(content)):
            if page != UICR_BASE and page >= self.chip.flash_size:
                continue
            start, size = self._page_span(page)
            if start >= address and start + size <= address + len(content):
                self._cache[page] = content[start - address : start - address + size]

    def _cached(self, address: int, length: int) -> bytes | None:
        if self._cache is None:
            return None
        pages = self._pages(address, length)
        if not all(p in self._cache for p in pages):
            return None
        joined = b"".join(self._cache[p] for p in pages)
        offset = address - pages[0]
        return joined[offset : offset + length]

    # --- memory -------------------------------------------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        if length == 0:
            return b""
        hit = self._cached(address, length)
        if hit is not None:
            return hit
        if self._cache is None:
            (data,) = self._flush([(address, length)])
            return data
        # A miss while reading ahead: run the queue, read this and every page written since.
        dirty = sorted(self._dirty - set(self._pages(address, length)))
        spans = [(address, length), *(self._page_span(p) for p in dirty)]
        found = self._flush(spans)
        self._dirty.clear()
        for (start, _), content in zip(spans, found, strict=True):
            self._fill(start, content)
        return found[0]

    def read_u32(self, address: int) -> int:
        return int.from_bytes(self.read(address, 4), "little")

    def write_flash(self, address: int, data: bytes) -> None:
        """Program flash or UICR: a HEX of ``data``, programmed without erase, read back."""
        if not data:
            return
        path = self._path(".hex")
        image = IntelHex()
        image.frombytes(data, offset=address)
        image.write_hex_file(str(path))
        op = {
            "type": "program",
            "firmware": {"file": str(path)},
            "options": {"chip_erase_mode": "ERASE_NONE", "verify": "VERIFY_READ"},
        }
        self._submit(op, self._pages(address, len(data)))

    def write_u32(self, address: int, value: int, *, nvmc: bool = False) -> None:
        if nvmc:
            self.write_flash(address, value.to_bytes(4, "little"))
            return
        self._submit({"type": "write", "address": address, "value": value, "width": 32})
        self._drop_cache()

    def erase_all(self) -> None:
        self._submit({"type": "erase", "kind": "all"})
        self._drop_cache()

    def erase_page(self, address: int) -> None:
        op = {"type": "erase", "kind": "pages", "pages": f"0x{address:X}-0x{address:X}"}
        self._submit(op, self._pages(address, 1))

    def erase_uicr(self) -> None:
        self._submit({"type": "erase", "kind": "uicr"}, [UICR_BASE])

    def recover(self) -> None:
        """Mass-erase a read-back protected chip, only where boards.yaml allows it."""
        if not self.target.allow_recover:
            raise InputError(
                f"board {self.board}: recover erases the whole chip and boards.yaml does not "
                "allow it; set probe.allow_recover: true for this board if that is wanted"
            )
        self._identified = True  # a protected chip answers no identity; recover needs none
        self._submit({"type": "recover"})
        self._drop_cache()

    # --- core ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """System reset; nrfutil leaves the core running after it."""
        self._core({"type": "reset", "kind": "RESET_SYSTEM"})

    def pin_reset(self) -> None:
        self._core({"type": "reset", "kind": "RESET_PIN"})

    def halt(self) -> None:
        self._core({"type": "halt"})

    def go(self) -> None:
        self._core({"type": "go"})

    def core_halted(self) -> bool | None:
        """``nrfutil device`` has no query for the core's run state: cannot tell."""
        return None

    def _core(self, op: dict[str, Any]) -> None:
        self._submit(op)
        self._drop_cache()

    def _drop_cache(self) -> None:
        """Firmware that runs may write its flash: nothing read before stays true."""
        if self._cache is not None:
            self._dirty |= set(self._cache)
            self._cache.clear()

    def extension(self, name: str) -> Any:
        """The virtual farm's ``sim_*`` calls, through its debug port (not through nrfutil)."""
        if self._extras is None or not name.startswith("sim_"):
            return None
        if self._extras_api is None:
            api = self._extras(self.chip.family)
            api.open()
            api.connect_to_emu_with_snr(self.target.snr, self.target.speed_khz)
            self._extras_api = api
        method = getattr(self._extras_api, name, None)
        return method if callable(method) else None


def _no_extras(family: str) -> LowLevelLike:
    raise InfrastructureError(f"no low-level API behind the nrfutil probe ({family})", "-")


def _read_args(op: dict[str, Any]) -> list[str]:
    return [
        "read",
        "--address",
        f"0x{op['address']:X}",
        "--bytes",
        str(op["bytes"]),
        "--to-file",
        str(op["toFile"]),
    ]


def _load(path: Path, address: int, length: int) -> bytes:
    """The bytes a ``read --to-file`` wrote; a short file is a rig problem, never padding."""
    try:
        image = IntelHex(str(path))
    except Exception as exc:  # intelhex raises its own hierarchy and OSError
        raise InfrastructureError(
            f"nrfutil's read of 0x{address:08X} left no readable HEX file ({exc})",
            "check `nrfutil device --version` is a release dfuhil supports",
        ) from None
    if len(image) != length or image.minaddr() != address:
        raise InfrastructureError(
            f"nrfutil's read of {length} bytes at 0x{address:08X} returned "
            f"{len(image)} bytes from 0x{image.minaddr() or 0:X}",
            "check `nrfutil device --version` is a release dfuhil supports",
        )
    return bytes(image.tobinstr(start=address, end=address + length - 1))
