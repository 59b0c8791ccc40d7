"""Provisioning over SWD in the order Nordic's mesh DFU guide requires.

Steps: chip erase, SoftDevice, bootloader, application, device page, reset. Each step reads back
before it writes and after it writes: content already on the board is skipped (and the log says
so), a page is rewritten only if it differs, a page is erased only if a write cannot reach the
wanted bytes by clearing bits (NOR flash), and every written page is verified. The whole set is
checked against the board's flash layout before the first byte moves, so a refused provisioning
changes nothing on the board.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dfuhil.errors import InfrastructureError, InputError, Problem
from dfuhil.farm.model import BoardSpec, ImageRef
from dfuhil.formats.chips import UICR_BASE, Chip
from dfuhil.formats.image import FlashImage
from dfuhil.links.probe import Probe

log = logging.getLogger(__name__)

IMAGE_STEPS = ("softdevice", "bootloader", "application", "device_page")
STEPS = ("chip_erase", *IMAGE_STEPS, "reset")
READ_CHUNK = 64 * 1024

# Called as progress(step, done, total) while a step works through pages.
Progress = Callable[[str, int, int], None]


def _no_progress(step: str, done: int, total: int) -> None:
    return None


@dataclass
class StepResult:
    """What one step did to one board: the evidence a report carries."""

    board: str
    step: str
    action: str  # "done" | "skipped" | "partial"
    detail: str
    pages_erased: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.board}: {self.step}: {self.action}: {self.detail}"


@dataclass(frozen=True)
class PlannedImage:
    role: str
    ref: ImageRef
    image: FlashImage
    pages: dict[int, bytes]
    uicr: dict[int, int]


@dataclass(frozen=True)
class ProvisioningPlan:
    """The firmware set of one board, loaded and checked against its flash layout."""

    board: BoardSpec
    images: dict[str, PlannedImage] = field(default_factory=dict)

    @classmethod
    def for_board(cls, board: BoardSpec) -> ProvisioningPlan:
        if board.firmware is None:
            raise InputError(
                f"board {board.name} has no firmware set to provision; add `firmware:` to it "
                "in the boards file"
            )
        chip = board.chip
        problems: list[Problem] = []
        images: dict[str, PlannedImage] = {}
        for role in IMAGE_STEPS:
            ref: ImageRef | None = getattr(board.firmware, role)
            if ref is None:
                continue
            fieldname = f"firmware_sets.{board.firmware.name}.{role}"
            try:
                image = FlashImage.load(ref.file, field=fieldname)
            except InputError as exc:
                problems += exc.problems
                continue
            problems += _check_placement(board, role, image, fieldname)
            images[role] = PlannedImage(role, ref, image, image.pages(chip), image.uicr_words(chip))
        if problems:
            raise InputError(problems)
        return cls(board=board, images=images)

    def wanted_content(self) -> dict[int, bytes]:
        """Page address -> wanted bytes, over every image of the set."""
        pages: dict[int, bytes] = {}
        for planned in self.images.values():
            pages.update(planned.pages)
        return pages

    def wanted_uicr(self) -> dict[int, int]:
        words: dict[int, int] = {}
        for planned in self.images.values():
            words.update(planned.uicr)
        return words


def _check_placement(
    board: BoardSpec, role: str, image: FlashImage, fieldname: str
) -> list[Problem]:
    """An image must stay inside its region of the layout, and UICR bytes inside UICR."""
    chip = board.chip
    problems: list[Problem] = []
    where = str(image.path)
    span = image.flash_span()
    region = board.layout.find(role)
    if span is not None:
        start, end = span
        if end > chip.flash_size:
            problems.append(
                Problem(
                    where,
                    None,
                    fieldname,
                    f"data up to 0x{end:X} runs past the end of {chip.name} flash "
                    f"(0x{chip.flash_size:X}); was it built for another chip?",
                )
            )
        elif region is None:
            problems.append(
                Problem(
                    where,
                    None,
                    fieldname,
                    f"flash layout '{board.layout.name}' has no '{role}' region to check "
                    "this image "
                    "against; add one",
                )
            )
        elif not (region.contains(start, end - start)):
            clash = [
                r
                for r in board.layout.regions.values()
                if r.name != role and r.start < end and start < r.end
            ]
            overlaps = f"; it overlaps {', '.join(str(r) for r in clash)}" if clash else ""
            problems.append(
                Problem(
                    where,
                    None,
                    fieldname,
                    f"data at 0x{start:X}..0x{end:X} is outside the {role} region "
                    f"0x{region.start:X}..0x{region.end:X} of layout '{board.layout.name}'"
                    f"{overlaps}; "
                    "rebuild the image for this layout or fix the layout",
                )
            )
    for run in image.uicr_runs():
        if not chip.is_uicr(run.start) or not chip.is_uicr(run.end - 1):
            problems.append(
                Problem(
                    where,
                    None,
                    fieldname,
                    f"data at 0x{run.start:X}..0x{run.end:X} is neither flash nor UICR of "
                    f"{chip.name}",
                )
            )
    return problems


class Provisioner:
    """Runs the steps of a plan on one open probe."""

    def __init__(self, plan: ProvisioningPlan, probe: Probe, progress: Progress | None = None):
        self.plan = plan
        self.probe = probe
        self.chip: Chip = plan.board.chip
        self.progress = progress or _no_progress
        self.results: list[StepResult] = []

    @property
    def board(self) -> str:
        return self.plan.board.name

    def run(self, steps: Sequence[str] = STEPS) -> list[StepResult]:
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise InputError(
                f"unknown provisioning step(s) {', '.join(unknown)}; steps are {', '.join(STEPS)}"
            )
        # One hint of every read the steps make, so a probe that pays per call (nrfutil) reads
        # them at once; the steps still compare and rewrite page by page on top.
        with self.probe.read_ahead(self._reads(steps)):
            return [self.step(name) for name in STEPS if name in steps]

    def _reads(self, steps: Sequence[str]) -> list[tuple[int, int]]:
        """What the steps read before they write: all flash for a chip erase (it looks for
        stale pages), else each image's pages; UICR always."""
        chip = self.chip
        reads = [(UICR_BASE, chip.uicr_size)]
        if "chip_erase" in steps:
            return [(0, chip.flash_size), *reads]
        pages = sorted(
            page
            for role, planned in self.plan.images.items()
            if role in steps
            for page in planned.pages
        )
        for page in pages:
            if reads[-1][0] + reads[-1][1] == page:
                reads[-1] = (reads[-1][0], reads[-1][1] + chip.page_size)
            else:
                reads.append((page, chip.page_size))
        return reads

    def step(self, name: str) -> StepResult:
        started = time.monotonic()
        if name == "chip_erase":
            result = self.chip_erase()
        elif name == "reset":
            self.probe.reset()
            result = StepResult(self.board, "reset", "done", "system reset, core running")
        else:
            result = self.write_image(name)
        result.seconds = time.monotonic() - started
        log.info("%s", result)
        self.results.append(result)
        return result

    # --- chip erase ---------------------------------------------------------------------------

    def chip_erase(self) -> StepResult:
        """Leave nothing on the board that the firmware set does not put there.

        Pages outside the set that hold data, and UICR words the set does not write, are
        stale. Erasing only those keeps a re-provisioning free; a board full of foreign content
        gets one ERASEALL instead when that is cheaper by the chip's own timings.
        """
        chip = self.chip
        wanted = self.plan.wanted_content()
        # Only pages outside the set are read here; the image steps read their own pages.
        others = [p for p in range(0, chip.flash_size, chip.page_size) if p not in wanted]
        stale = [
            page
            for page, content in self._read_pages(others).items()
            if content.count(0xFF) != len(content)
        ]
        uicr = self.probe.read(UICR_BASE, chip.uicr_size)
        wanted_uicr = self.plan.wanted_uicr()
        stale_uicr = any(
            int.from_bytes(uicr[off : off + 4], "little") != 0xFFFFFFFF
            and (UICR_BASE + off) not in wanted_uicr
            for off in range(0, chip.uicr_size, 4)
        )
        if not stale and not stale_uicr:
            return StepResult(
                self.board,
                "chip_erase",
                "skipped",
                "nothing outside the firmware set is on the board",
            )
        t = chip.timing
        selective = (len(stale) + int(stale_uicr)) * t.erase_page_s
        # ERASEALL would also wipe what already matches: price rewriting it.
        current = self._read_pages(list(wanted))
        matching_bytes = sum(len(p) for page, p in wanted.items() if current[page] == p)
        full = t.erase_all_s + matching_bytes / 4 * t.write_word_s
        if full < selective:
            self.probe.erase_all()
            return StepResult(
                self.board,
                "chip_erase",
                "done",
                f"ERASEALL ({len(stale)} stale pages: cheaper than page by page)",
                pages_erased=chip.pages,
            )
        for i, page in enumerate(stale):
            self.probe.erase_page(page)
            self.progress("chip_erase", i + 1, len(stale))
        if stale_uicr:
            self.probe.erase_uicr()
        what = f"erased {len(stale)} stale pages" + (" and UICR" if stale_uicr else "")
        return StepResult(
            self.board, "chip_erase", "partial", what, pages_erased=len(stale) + int(stale_uicr)
        )

    def _read_pages(self, pages: list[int]) -> dict[int, bytes]:
        """Read the given pages, in as few probe reads as contiguous runs allow."""
        size = self.chip.page_size
        out: dict[int, bytes] = {}
        run: list[int] = []
        for page in [*sorted(pages), None]:
            if run and (page is None or page != run[-1] + size or len(run) * size >= READ_CHUNK):
                data = self.probe.read(run[0], len(run) * size)
                out.update({p: data[i * size : (i + 1) * size] for i, p in enumerate(run)})
                run = []
            if page is not None:
                run.append(page)
        return out

    # --- image steps --------------------------------------------------------------------------

    def write_image(self, role: str) -> StepResult:
        planned = self.plan.images.get(role)
        if planned is None:
            return StepResult(self.board, role, "skipped", "the firmware set has no such image")
        name = planned.image.path.name
        erased = written = 0
        changed: list[int] = []
        total = len(planned.pages)
        for i, (page, wanted) in enumerate(planned.pages.items()):
            current = self.probe.read(page, len(wanted))
            if current != wanted:
                e, w = self._program_page(page, current, wanted)
                erased, written = erased + e, written + w
                changed.append(page)
            self.progress(role, i + 1, total)
        uicr_written, uicr_erased = self._program_uicr(planned.uicr)
        written += uicr_written
        erased += uicr_erased
        # Pages that matched were just read; only what was written needs reading back.
        self._verify(planned, changed, uicr=uicr_written > 0)
        sha = planned.image.sha256[:12]
        if not changed and uicr_written == 0:
            return StepResult(
                self.board,
                role,
                "skipped",
                f"{name} already on the board ({total} pages match, sha256 {sha})",
            )
        action = "done" if len(changed) == total else "partial"
        detail = f"{name}: rewrote {len(changed)} of {total} pages"
        if uicr_written:
            detail += f", UICR {uicr_written} bytes"
        return StepResult(
            self.board,
            role,
            action,
            f"{detail} (sha256 {sha})",
            pages_erased=erased,
            bytes_written=written,
        )

    def _program_page(self, page: int, current: bytes, wanted: bytes) -> tuple[int, int]:
        """Bring one page to ``wanted``; erase only when some bit must go from 0 to 1."""
        needs_erase = any(c & w != w for c, w in zip(current, wanted, strict=True))
        base = b"\xff" * len(wanted) if needs_erase else current
        if needs_erase:
            self.probe.erase_page(page)
        written = 0
        for start, end in _differing_word_runs(base, wanted):
            self.probe.write_flash(page + start, wanted[start:end])
            written += end - start
        return int(needs_erase), written

    def _program_uicr(self, wanted: dict[int, int]) -> tuple[int, int]:
        if not wanted:
            return 0, 0
        chip = self.chip
        raw = bytearray(self.probe.read(UICR_BASE, chip.uicr_size))
        current = {
            a: int.from_bytes(raw[a - UICR_BASE : a - UICR_BASE + 4], "little") for a in wanted
        }
        if all(current[a] == v for a, v in wanted.items()):
            return 0, 0
        erased = 0
        if any(current[a] & v != v for a, v in wanted.items()):
            # UICR erases as a whole: keep what else is there (reset pin, APPROTECT, ...).
            self.probe.erase_uicr()
            erased = 1
            keep = {
                UICR_BASE + off: int.from_bytes(raw[off : off + 4], "little")
                for off in range(0, chip.uicr_size, 4)
            }
            todo = {a: v for a, v in keep.items() if v != 0xFFFFFFFF and a not in wanted}
            todo.update(wanted)
        else:
            todo = {a: v for a, v in wanted.items() if current[a] != v}
        for address, value in sorted(todo.items()):
            if value != 0xFFFFFFFF:
                self.probe.write_flash(address, value.to_bytes(4, "little"))
        return 4 * len(todo), erased

    def _verify(self, planned: PlannedImage, pages: list[int], *, uicr: bool) -> None:
        for page in pages:
            wanted = planned.pages[page]
            if self.probe.read(page, len(wanted)) != wanted:
                raise InfrastructureError(
                    f"{planned.role} verify failed at page 0x{page:X} after programming "
                    f"{planned.image.path.name}",
                    "the board's flash did not take the write: check power, run "
                    "`nrfjprog --recover`, or take the board out of the farm",
                    board=self.board,
                )
        for address, value in planned.uicr.items() if uicr else ():
            if self.probe.read_u32(address) != value:
                raise InfrastructureError(
                    f"{planned.role} verify failed at UICR 0x{address:08X}",
                    "UICR did not take the write: run `nrfjprog --recover` and provision again",
                    board=self.board,
                )


def _differing_word_runs(current: bytes, wanted: bytes) -> list[tuple[int, int]]:
    """Word-aligned [start, end) runs where ``wanted`` differs from ``current`` (and isn't 0xFF
    over erased flash, which needs no write)."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for off in range(0, len(wanted), 4):
        differs = current[off : off + 4] != wanted[off : off + 4]
        if differs and start is None:
            start = off
        elif not differs and start is not None:
            runs.append((start, off))
            start = None
    if start is not None:
        runs.append((start, len(wanted)))
    return runs
