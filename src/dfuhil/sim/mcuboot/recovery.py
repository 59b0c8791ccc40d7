"""MCUboot's serial recovery (``boot_serial.c``): a small SMP server inside the bootloader.

Its flavour differs from a Zephyr application's (spec §4.6): every error is a v1 ``{"rc": n}``
even for v2 requests, the image list holds only slots whose image passes full validation,
uploads go straight into the primary slot (whole slot erased at ``off`` 0, every answer carries
``"rc": 0``), echo and the MCUmgr parameters exist only when built in, reset answers
``{"rc": 0}`` and reboots 250 ms later, and anything else is ``{"rc": 8}``. The frame codec,
dispatcher and upload receiver are the ones the virtual Zephyr app uses (dfuhil.sim.smp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dfuhil.formats.mcuboot import IMAGE_MAGIC
from dfuhil.formats.mcuboot_build import SerialRecovery, Slot
from dfuhil.formats.mcuboot_trailer import Magic, SwapType, decide_swap
from dfuhil.formats.smp import (
    Group,
    ImageCmd,
    MgmtErr,
    OsCmd,
    SmpHeader,
)
from dfuhil.sim.mcuboot.area import FlashArea
from dfuhil.sim.mcuboot.core import Boot
from dfuhil.sim.mcuboot.validate import inspect_image, max_image_size, read_header
from dfuhil.sim.smp.serial_port import serve_serial
from dfuhil.sim.smp.server import Handler, SmpDispatcher, SmpError
from dfuhil.sim.smp.upload import MCUBOOT_UPLOAD, UploadReceiver, UploadRequest

if TYPE_CHECKING:
    from dfuhil.sim.runtime import FirmwareContext

RESET_DELAY_S = 0.25  # bs_reset: k_sleep(K_MSEC(250)) before sys_reboot
BOOT_EBADIMAGE = 3


class RecoveryServer:
    """The commands boot_serial answers, for one boot."""

    def __init__(self, ctx: FirmwareContext, boot: Boot, config: SerialRecovery) -> None:
        self.ctx = ctx
        self.boot = boot
        self.config = config
        self.reset_requested = False
        # BOOT_SERIAL_IMG_GRP_IMAGE_STATE depends on !SINGLE_APPLICATION_SLOT.
        self.image_state = config.image_state and boot.secondary is not None
        geometry = boot.geometry
        self.upload = UploadReceiver(
            ctx,
            MCUBOOT_UPLOAD,
            self._upload_slot,
            page_size=geometry.sector_size,
            write_size=geometry.write_size,
        )
        d = self.dispatcher = SmpDispatcher(error_style="v1")
        # boot_serial_input switches on group and id only: read and write do the same.
        both: list[tuple[Group, int, Handler]] = [
            (Group.IMAGE, ImageCmd.UPLOAD, self.upload.handle),
            (Group.OS, OsCmd.CONSOLE_ECHO_CTRL, lambda _b, _h: {"rc": 0}),
            (Group.OS, OsCmd.RESET, self._reset),
        ]
        if config.echo:
            both.append((Group.OS, OsCmd.ECHO, self._echo))
        if config.mcumgr_params:
            both.append((Group.OS, OsCmd.MCUMGR_PARAMS, self._params))
        for group, command, handler in both:
            d.register(group, command, read=handler, write=handler)
        d.register(Group.IMAGE, ImageCmd.STATE, read=self._list, write=self._set_state)

    # --- the serial loop -----------------------------------------------------------------------

    def serve(self, timeout_s: float | None = None) -> bool:
        """Serve SMP on the console until reset. With ``timeout_s`` (BOOT_SERIAL_WAIT_FOR_DFU)
        return False if no SMP frame arrived in that time."""
        wait = None if timeout_s is None else max(timeout_s, 0.001)
        return serve_serial(
            self.ctx,
            self.dispatcher,
            buf_size=self.config.buf_size,
            timeout_s=wait,
            after_reply=self._reset_if_requested,
        )

    def _reset_if_requested(self) -> None:
        if self.reset_requested:
            self.ctx.sleep(RESET_DELAY_S)
            self.ctx.system_reset()

    # --- image group ---------------------------------------------------------------------------

    def _upload_slot(self, request: UploadRequest) -> Slot:
        if request.image != 0:
            raise SmpError(MgmtErr.EINVAL, rsn=f"no image {request.image} in this build")
        return self.boot.geometry.primary

    def _slots(self) -> list[FlashArea]:
        boot = self.boot
        return [boot.primary] if boot.secondary is None else [boot.primary, boot.secondary]

    def _valid_hash(self, area: FlashArea) -> bytes | None:
        """The image hash of a slot whose image passes ``bootutil_img_validate``."""
        header = read_header(area)
        if header is None or header.magic != IMAGE_MAGIC:
            return None
        boot = self.boot
        image, _problem = inspect_image(area, boot.key, max_image_size(boot.geometry, area))
        return None if image is None else image.image_hash

    def _list(self, _body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        """``bs_list``: only validated slots; state flags only with IMAGE_STATE."""
        swap = SwapType.NONE
        if self.image_state:
            swap = decide_swap(self.boot.primary.trailer(), self.boot.other().trailer())
        images: list[dict[str, Any]] = []
        for slot, area in enumerate(self._slots()):
            image_hash = self._valid_hash(area)
            header = read_header(area)
            if image_hash is None or header is None:
                continue
            entry: dict[str, Any] = {}
            if self.image_state:
                entry.update(_state_flags(swap, slot, header.bootable))
            entry["slot"] = slot
            entry["hash"] = image_hash
            entry["version"] = str(header.version)
            images.append(entry)
        return {"images": images}

    def _set_state(self, body: dict[str, Any], header: SmpHeader) -> dict[str, Any]:
        """``bs_set``: test or confirm the image with this hash (the secondary's trailer)."""
        if not self.image_state:
            raise SmpError(MgmtErr.ENOTSUP)
        confirm = body.get("confirm", False)
        image_hash = body.get("hash", b"")
        if not isinstance(confirm, bool) or not isinstance(image_hash, bytes):
            raise SmpError(MgmtErr.EINVAL)
        if len(image_hash) not in (0, 32):
            raise SmpError(MgmtErr.EINVAL)
        if image_hash and image_hash not in [self._valid_hash(a) for a in self._slots()]:
            self.ctx.print("E: Did not find image with specified hash")
            raise SmpError(MgmtErr.ENOENT)
        rc = self._set_pending(confirm)
        if rc:
            raise SmpError(rc)
        return self._list(body, header)

    def _set_pending(self, confirm: bool) -> int:
        """``boot_set_pending_multi`` on the secondary: magic, image_ok if permanent, swap_info."""
        secondary = self.boot.other()
        state = secondary.trailer()
        if state.magic == Magic.BAD:
            return BOOT_EBADIMAGE
        if state.magic == Magic.UNSET:
            secondary.write_field("magic")
            if confirm:
                secondary.write_field("image_ok", 0x01)
            secondary.write_field("swap_info", SwapType.PERM if confirm else SwapType.TEST)
        return 0

    # --- OS group --------------------------------------------------------------------------------

    def _echo(self, body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        text = body.get("d")
        if not isinstance(text, str):
            raise SmpError(MgmtErr.EINVAL)
        return {"r": text}

    def _params(self, _body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        return {"buf_size": self.config.buf_size, "buf_count": 1}

    def _reset(self, _body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        self.reset_requested = True
        return {"rc": 0}


def _state_flags(swap: SwapType, slot: int, bootable: bool) -> dict[str, bool]:
    """``bs_list`` with IMAGE_STATE: flags from the swap type the trailers give."""
    primary = slot == 0
    flags = {
        "bootable": bootable,
        "confirmed": (swap in (SwapType.NONE, SwapType.TEST, SwapType.PERM) and primary)
        or (swap == SwapType.REVERT and not primary),
        "active": (swap in (SwapType.NONE, SwapType.REVERT)) and primary,
        "pending": swap in (SwapType.TEST, SwapType.PERM) and not primary,
        "permanent": swap == SwapType.PERM and not primary,
    }
    return {key: True for key, value in flags.items() if value}
