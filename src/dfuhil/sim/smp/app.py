"""The virtual Zephyr application with an SMP server (smp_svr / nRF Desktop style), ``smp_app``.

What a person at the bench sees: the Zephyr boot banner and a line naming the app, the version
from its own image header and the slot it runs from; LED ``led`` toggling every ``period_ms``;
an SMP server on the console UART (and on the board's UDP socket when the build has ``udp``,
on the board's Bluetooth LE radio when it has ``ble``: dfuhil.sim.ble_smp).

Like Zephyr's SMP work queue, one thread (the firmware's main thread) runs every SMP command and
every flash operation; reader threads only collect packets from the UART and the UDP socket.
Every request holds one of the build's MCUmgr netbufs (``dfuhil.sim.netbufs``, one pool for all
transports) until it is answered; one that finds none is dropped unanswered, as on the board.
Commands (spec §4.4): OS echo, reset (``{}`` first, the reset 250 ms device time later;
``boot_mode`` is written to GPREGRET, so 1 makes MCUboot enter serial recovery), MCUmgr params,
bootloader info (``mode`` from MODE_NUMBERS); image state read/write (``img_state``), upload
(``upload``, Zephyr policy, to the slot not running) and erase. Group errors are
``{"err": ...}`` for v2 requests and translated ``rc`` for v1 requests (``server``).

The console UART feeds the SMP server through Zephyr's line buffers as built
(``uart_rx_buf_count`` x ``uart_rx_buf_size``, ``uart_lines``): a request that reaches the board
in one burst (a board whose UART delivers bursts, USB CDC-ACM) loses the lines beyond the free
buffers and gets no answer, as on the bench.

Build options (``SmpAppBuild``): ``confirm_at_boot`` confirms the running image once it runs
(nRF Desktop's ``dfu_backend_init``; not in plain direct-xip, where there is nothing to confirm);
``fault: crash-at-boot`` prints a Zephyr fatal error and resets shortly after boot (before any
confirm); ``fault: never-confirm`` never confirms by itself; ``dfu_lock_timeout_ms`` enables
nRF Desktop's DFU lock between the two transports (``dfu_lock``).
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dfuhil.formats.mcuboot_trailer import MODE_NUMBERS
from dfuhil.formats.smp import (
    FRAME_OVERHEAD,
    Group,
    ImageCmd,
    ImgMgmtErr,
    MgmtErr,
    OsCmd,
    OsMgmtErr,
    SerialFrameDecoder,
    SmpHeader,
    SmpPacket,
    encode_frames,
)
from dfuhil.sim.ble_smp import BleSmpPort
from dfuhil.sim.clock import ResetSignal
from dfuhil.sim.mcuboot.config import SmpAppBuild
from dfuhil.sim.netbufs import NetbufPool
from dfuhil.sim.runtime import Firmware, behaviour
from dfuhil.sim.smp.dfu_lock import DfuLock
from dfuhil.sim.smp.img_state import ImageState, image_error
from dfuhil.sim.smp.server import SmpDispatcher, SmpError
from dfuhil.sim.smp.uart_lines import UartLineBuffers
from dfuhil.sim.smp.upload import ZEPHYR_UPLOAD, UploadReceiver

ZEPHYR_VERSION = "v3.7.99-ncs1"  # the same NCS build as the virtual MCUboot's default
RESET_DELAY_S = 0.25  # CONFIG_MCUMGR_GRP_OS_RESET_MS
CRASH_AFTER_S = 0.05  # device time from boot to the crashing build's fault
_POLL_WALL_S = 0.05


@dataclass(frozen=True)
class _Job:
    transport: str
    packet: bytes
    reply: Callable[[list[bytes]], None]
    done: Callable[[], None] | None = None  # the request's buffer is free again


def active_slot_of(build: SmpAppBuild, address: int) -> int:
    """Which slot the CPU runs from: 1 if the secondary holds ``address``, else 0."""
    secondary = build.geometry.secondary
    if secondary is not None and secondary.start <= address < secondary.end:
        return 1
    return 0


@behaviour("smp_app")
class SmpApp(Firmware):
    def run(self) -> None:
        ctx = self.ctx
        self.build = build = SmpAppBuild.from_params(ctx.behaviour.params)
        geometry = build.geometry
        active = active_slot_of(build, ctx.address)
        page_size = ctx.board.chip.page_size
        self.images = ImageState(ctx, geometry, active, page_size=page_size)
        self.upload = UploadReceiver(
            ctx,
            ZEPHYR_UPLOAD,
            lambda _request: self.images.upload_slot(),
            page_size=page_size,
            write_size=geometry.write_size,
            trailer_start=lambda slot: geometry.layout(slot).status_start,
            running_version=self.images.running_version,
        )
        self.lock: DfuLock | None = None
        if build.dfu_lock_timeout_ms > 0:
            self.lock = DfuLock(
                build.dfu_lock_timeout_ms / 1000, ctx.now, lambda _old, _new: self.upload.reset()
            )
        self.reset_at: float | None = None
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.netbufs = NetbufPool(build.buf_count)  # every transport's requests share it

        info = self.images.read_info(active)
        version = str(info.version) if info is not None else ctx.behaviour.version
        where = "primary" if active == 0 else "secondary"
        ctx.print(f"*** Booting Zephyr OS build {ZEPHYR_VERSION} ***")
        ctx.print(f"I: {build.name} {version} running from slot {active} ({where})")
        self._spawn(self._blink, "led")
        if build.fault == "crash-at-boot":
            self._crash()
        if build.confirm_at_boot and build.fault != "never-confirm":
            self._confirm_at_boot()
        self._spawn(self._serial_reader, "smp-uart")
        if build.udp:
            self._spawn(self._udp_reader, "smp-udp")
        peripheral = ctx.board.ble
        if build.ble and peripheral is not None:
            port = BleSmpPort(ctx, peripheral, peripheral.config, build.buf_size, self.netbufs)
            peripheral.start()
            self._spawn(lambda: port.serve(self._ble_job(port)), "smp-ble")
        self._work()

    # --- boot ---------------------------------------------------------------------------------

    def _crash(self) -> None:
        ctx = self.ctx
        ctx.sleep(CRASH_AFTER_S)
        ctx.print("E: ***** BUS FAULT *****")
        ctx.print("E: >>> ZEPHYR FATAL ERROR 0: CPU exception on CPU 0")
        ctx.print("E: Fault during interrupt handling")
        ctx.log("crash-at-boot build: fatal error, resetting")
        ctx.system_reset()

    def _confirm_at_boot(self) -> None:
        if self.build.geometry.mode == "direct-xip":
            return
        try:
            self.images.confirm_running()
        except SmpError as err:
            self.ctx.print(f"E: Cannot confirm a running image: {err}")
            return
        self.ctx.log("confirmed the running image (boot_write_img_confirmed)")

    # --- threads ------------------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        board = self.ctx.board

        def body() -> None:
            try:
                target()
            except ResetSignal:
                pass
            except Exception:  # a plug-in bug must not pass silently
                board.log.error("%s thread crashed:\n%s", name, traceback.format_exc())

        threading.Thread(target=body, name=f"{board.name}-{name}", daemon=True).start()

    def _blink(self) -> None:
        ctx, lit = self.ctx, False
        ctx.leds_all(False)
        while True:
            lit = not lit
            ctx.led(self.build.led, lit)
            ctx.sleep(self.build.period_ms / 1000)

    def _serial_reader(self) -> None:
        """``uart_mcumgr.c`` and ``smp_uart.c``: lines into the build's line buffers (a burst
        can overflow them, see ``uart_lines``), surviving lines into the frame decoder."""
        ctx = self.ctx
        build = self.build
        decoder = SerialFrameDecoder()
        self.uart_lines = lines = UartLineBuffers(
            build.uart_rx_buf_count, build.uart_rx_buf_size, burst=ctx.board.uart.bursts
        )

        def reply(packets: list[bytes]) -> None:
            ctx.uart_write(b"".join(encode_frames(p) for p in packets))

        while True:
            before = lines.dropped + lines.too_long
            received = lines.feed(ctx.uart_read(4096, None))
            if lines.dropped + lines.too_long > before:
                ctx.log(
                    f"SMP UART: {lines.dropped + lines.too_long - before} line(s) dropped "
                    f"({build.uart_rx_buf_count} RX buffers of {build.uart_rx_buf_size} bytes)"
                )
            for item in decoder.feed(b"".join(received)):
                if not isinstance(item, SmpPacket):
                    continue  # console input the app has no shell for
                if len(item.data) + FRAME_OVERHEAD > self.build.buf_size:
                    ctx.log(f"SMP packet of {len(item.data)} bytes exceeds the netbuf, dropped")
                    continue
                if not self.netbufs.take():
                    ctx.log(f"SMP UART: {self.netbufs.refusal()}: a frame dropped")
                    continue
                self.jobs.put(_Job("serial", item.data, reply, self.netbufs.release))

    def _udp_reader(self) -> None:
        ctx = self.ctx
        while True:
            received = ctx.udp_receive(None)
            if received is None:
                continue
            data, addr = received

            def reply(packets: list[bytes], addr: tuple[str, int] = addr) -> None:
                for packet in packets:
                    ctx.udp_send(packet, addr)

            if not self.netbufs.take():
                ctx.log(f"SMP UDP: {self.netbufs.refusal()}: a datagram dropped")
                continue
            self.jobs.put(_Job("udp", data, reply, self.netbufs.release))

    def _ble_job(self, port: BleSmpPort) -> Callable[[int, bytes], None]:
        def submit(connection: int, packet: bytes) -> None:
            def reply(packets: list[bytes]) -> None:
                port.reply(connection, packets)

            self.jobs.put(_Job("ble", packet, reply, self.netbufs.release))

        return submit

    def _work(self) -> None:
        """The SMP work queue: every command and every flash operation runs here."""
        ctx = self.ctx
        clock = ctx.board.clock
        dispatchers = {name: self._dispatcher(name) for name in ("serial", "udp", "ble")}
        while True:
            wait = _POLL_WALL_S
            if self.reset_at is not None:
                wait = max(0.0, min(wait, clock.wall(self.reset_at - ctx.now())))
            try:
                job: _Job | None = self.jobs.get(timeout=wait)
            except queue.Empty:
                job = None
            ctx.checkpoint()
            if self.reset_at is not None and ctx.now() >= self.reset_at:
                ctx.log("SMP reset")
                ctx.system_reset()
            if job is not None:
                try:
                    replies = dispatchers[job.transport].responses(job.packet)
                    if replies:
                        job.reply(replies)
                finally:
                    if job.done is not None:
                        job.done()

    # --- SMP ----------------------------------------------------------------------------------

    def _dispatcher(self, transport: str) -> SmpDispatcher:
        lock = self.lock

        def on_request(header: SmpHeader) -> None:
            if lock is not None:
                lock.check(transport, header)

        d = SmpDispatcher("v2", on_request=on_request)
        d.register(Group.OS, OsCmd.ECHO, read=self._echo, write=self._echo)
        d.register(Group.OS, OsCmd.RESET, write=self._reset)
        d.register(Group.OS, OsCmd.MCUMGR_PARAMS, read=self._params)
        d.register(Group.OS, OsCmd.BOOTLOADER_INFO, read=self._bootloader_info)
        d.register(Group.IMAGE, ImageCmd.STATE, read=self._state_read)
        if self.images.writable:
            d.register(Group.IMAGE, ImageCmd.STATE, write=self._state_write)
        d.register(Group.IMAGE, ImageCmd.UPLOAD, write=self.upload.handle)
        d.register(Group.IMAGE, ImageCmd.ERASE, write=self._erase)
        return d

    def _echo(self, body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        text = body.get("d")
        if not isinstance(text, str):
            raise SmpError(MgmtErr.EINVAL, rsn="echo needs a text 'd'")
        return {"r": text}

    def _reset(self, body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        boot_mode = body.get("boot_mode")
        if boot_mode is not None:
            if isinstance(boot_mode, bool) or not isinstance(boot_mode, int):
                raise SmpError(MgmtErr.EINVAL, rsn="boot_mode must be an unsigned integer")
            if not 0 <= boot_mode <= 0xFF:
                raise SmpError(MgmtErr.EINVAL, rsn="boot_mode must fit in a byte")
            self.ctx.set_gpregret(boot_mode)  # the retention boot mode MCUboot reads
        self.reset_at = self.ctx.now() + RESET_DELAY_S
        return {}

    def _params(self, _body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        return {"buf_size": self.build.buf_size, "buf_count": self.build.buf_count}

    def _bootloader_info(self, body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        query = body.get("query")
        if query is None:
            return {"bootloader": "MCUboot"}
        if not isinstance(query, str):
            raise SmpError(MgmtErr.EINVAL, rsn="query must be text")
        if query == "mode":
            return {"mode": MODE_NUMBERS[self.build.geometry.mode]}
        # os_mgmt_bootloader_info returns OS_MGMT_ERR_QUERY_YIELDS_NO_ANSWER as the handler's
        # own rc, not through smp_add_cmd_err: the client sees {"rc": 3}, not an err map.
        raise SmpError(OsMgmtErr.QUERY_YIELDS_NO_ANSWER)

    def _state_read(self, _body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        return self.images.state_list()

    def _state_write(self, body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        """``img_mgmt_state_write``."""
        digest = body.get("hash", b"")
        confirm = body.get("confirm", False)
        if not isinstance(digest, bytes) or not isinstance(confirm, bool):
            raise SmpError(MgmtErr.EINVAL, rsn="hash must be bytes and confirm a bool")
        if not digest:
            if not confirm:
                raise image_error(ImgMgmtErr.INVALID_HASH, "test needs a hash")
            slot = self.images.active
        elif len(digest) != 32:
            raise image_error(ImgMgmtErr.INVALID_HASH, f"hash of {len(digest)} bytes")
        else:
            found = self.images.find_by_hash(digest)
            if found is None:
                raise image_error(ImgMgmtErr.HASH_NOT_FOUND)
            slot = found
        self.images.set_next_boot_slot(slot, confirm)
        return self.images.state_list()

    def _erase(self, body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        """``img_mgmt_erase``: default the slot not running; refused while it is in use."""
        number = body.get("slot", self.images.opposite(self.images.active))
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise SmpError(MgmtErr.EINVAL, rsn="slot must be an unsigned integer")
        if self.images.slot(number) is None:
            raise image_error(ImgMgmtErr.INVALID_SLOT, f"no slot {number}")
        if self.images.read_info(number) is not None and self.images.slot_in_use(number):
            raise image_error(ImgMgmtErr.NO_FREE_SLOT, f"slot {number} is in use")
        self.images.erase_slot(number)
        self.upload.reset()
        return {}
