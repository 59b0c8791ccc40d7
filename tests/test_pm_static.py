"""Partition Manager files: real NCS layouts read as regions, broken ones refused at FILE:LINE."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dfuhil.errors import InputError, Problem
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import FlashLayout, Region
from dfuhil.formats.chips import CHIPS
from dfuhil.formats.pm_static import parse_pm_static, read_pm_static

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pm_static_nrf52840.yml"

# A TF-M-less nRF5340-style file trimmed to what matters: nested spans, another region, an
# external flash partition of size 0, and hex strings.
NESTED = textwrap.dedent(
    """
    mcuboot:
      address: 0x0
      region: flash_primary
      size: 0x6000
    mcuboot_pad:
      address: 0x6000
      size: 0x400
    mcuboot_primary_app:
      address: 0x6400
      size: 0x3BC00
      span: [app]
    app:
      address: '0x6400'
      size: 0x3BC00
    mcuboot_primary:
      address: 0x6000
      size: 0x3C000
      span: [mcuboot_pad, mcuboot_primary_app]
    external_flash:
      address: 0x0
      region: external_flash
      size: 0x0
    sram_primary:
      address: 0x20000000
      region: sram_primary
      size: 0x10000
    """
).lstrip()


def problems(text: str) -> list[Problem]:
    with pytest.raises(InputError) as info:
        parse_pm_static(text, source="pm.yml")
    found: list[Problem] = info.value.problems
    return found


def test_example_reads_as_the_ncs_default_layout() -> None:
    table = read_pm_static(EXAMPLE)
    names = [p.name for p in table.partitions]
    assert "sram_primary" not in names  # not code flash
    primary = table.get("mcuboot_primary")
    assert primary is not None and primary.span == ("mcuboot_pad", "app")
    assert (primary.address, primary.size, primary.end) == (0xC000, 0x76000, 0x82000)
    assert table.members("mcuboot_primary") == {"mcuboot_pad", "app"}
    assert table.nested() == {"mcuboot_pad", "app", "mcuboot_primary_app"}
    secondary = table.get("mcuboot_secondary")
    assert secondary is not None and (secondary.address, secondary.size) == (0x82000, 0x76000)
    assert secondary.line == 46 and not secondary.is_container


def test_nested_spans_hex_strings_and_other_regions() -> None:
    table = parse_pm_static(NESTED)
    assert [p.name for p in table.partitions] == [
        "mcuboot",
        "mcuboot_pad",
        "mcuboot_primary_app",
        "app",
        "mcuboot_primary",
    ]
    assert table.members("mcuboot_primary") == {"mcuboot_pad", "mcuboot_primary_app", "app"}
    assert table.get("app") is not None and table.get("app").address == 0x6400  # type: ignore[union-attr]
    assert table.nested() == {"mcuboot_pad", "mcuboot_primary_app", "app"}


def test_end_address_must_match() -> None:
    text = "mcuboot:\n  address: 0x0\n  end_address: 0xC200\n  size: 0xC000\n"
    (p,) = problems(text)
    assert (p.file, p.line, p.field) == ("pm.yml", 3, "mcuboot.end_address")
    assert "0xC200 is not address + size" in p.message and "0xC000" in p.message


def test_overlapping_partitions_name_both_with_ranges_and_lines() -> None:
    text = EXAMPLE.read_text().replace(
        "settings_storage:\n  address: 0xf8000\n  end_address: 0x100000",
        "settings_storage:\n  address: 0xf0000\n  end_address: 0xf8000",
    )
    (p,) = problems(text)
    assert (p.line, p.field) == (58, "settings_storage")
    assert "settings_storage 0xF0000..0xF8000 overlaps mcuboot_secondary 0x82000..0xF8000" in (
        p.message
    )
    assert "(line 46)" in p.message


def test_a_span_must_cover_its_members_and_name_real_ones() -> None:
    text = NESTED.replace("  size: 0x3C000\n", "  size: 0x3B000\n").replace(
        "span: [mcuboot_pad, mcuboot_primary_app]", "span: [mcuboot_pad, mcuboot_primary_app, nope]"
    )
    found = problems(text)
    messages = [f"{p.line}: {p.field}: {p.message}" for p in found]
    assert any("does not cover its member mcuboot_primary_app" in m for m in messages), messages
    assert any("spans 'nope', which is not a flash_primary partition" in m for m in messages)
    assert all(p.line == 15 for p in found)


def test_a_span_overlapping_a_partition_it_does_not_span_is_refused() -> None:
    # Overlapping app (a member of both spans) is one problem, not three.
    (p,) = problems(NESTED + "settings:\n  address: 0x3F000\n  size: 0x1000\n")
    assert p.field == "settings" and "overlaps app 0x6400..0x42000" in p.message
    # A span over a partition it does not name.
    text = NESTED.replace("span: [mcuboot_pad, mcuboot_primary_app]", "span: [mcuboot_pad]")
    found = problems(text)
    assert {p.field for p in found} == {"mcuboot_primary"}
    assert "overlaps app 0x6400..0x42000 (line 12)" in found[-1].message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: [1, 2\n", 2, "YAML syntax error"),
        ("- a\n- b\n", 1, "expected a mapping of partition names"),
        ("a: 3\n", 1, "expected a mapping with address and size"),
        ("a:\n  size: 0x1000\n", 1, "no address"),
        ("a:\n  address: zero\n  size: 0x1000\n", 2, "'zero' is not an address or size"),
        ("a:\n  address: 0\n  size: 0x1000\n  span: 3\n", 4, "expected a list of partition"),
        ("a: {address: 0, size: 1}\na: {address: 0, size: 1}\n", 2, "duplicate key"),
    ],
)
def test_broken_files(text: str, line: int, words: str) -> None:
    found = problems(text)
    assert found[0].line == line, found
    assert words in found[0].message, found


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Partition Manager file not found"):
        read_pm_static(tmp_path / "pm_static.yml")


# --- in boards.yaml -------------------------------------------------------------------------

FARM = textwrap.dedent(
    """
    version: 1
    flash_layouts:
      pm:
        chip: nRF52840_xxAA
        pm_static: pm_static.yml
    boards:
      - name: dk
        chip: nRF52840_xxAA
        probe: {backend: virtual}
        flash_layout: pm
    """
).lstrip()


def farm_with(tmp_path: Path, pm_text: str, farm: str = FARM) -> Path:
    (tmp_path / "pm_static.yml").write_text(pm_text)
    path = tmp_path / "boards.yaml"
    path.write_text(farm)
    return path


def test_a_layout_from_pm_static(tmp_path: Path) -> None:
    board = load_farm(farm_with(tmp_path, EXAMPLE.read_text())).board("dk")
    layout = board.layout
    assert layout.source == tmp_path / "pm_static.yml"
    assert layout.containers == {"mcuboot_primary", "mcuboot_primary_app"}
    assert layout.region("mcuboot_primary") == Region("mcuboot_primary", 0xC000, 0x76000)
    assert layout.region("app") == Region("app", 0xC200, 0x75E00)
    # Provisioning looks regions up by image role; PM names stand in for them.
    assert layout.find("bootloader") == layout.region("mcuboot")
    assert layout.find("application") == layout.region("mcuboot_primary")
    assert layout.find("softdevice") is None
    slots = layout.mcuboot_slots()
    assert (slots.primary, slots.secondary, slots.scratch) == (
        layout.region("mcuboot_primary"),
        layout.region("mcuboot_secondary"),
        None,
    )
    geometry = slots.geometry("swap-move", sector_size=board.chip.page_size)
    assert (geometry.primary.start, geometry.secondary) == (0xC000, geometry.secondary)
    assert geometry.secondary is not None and geometry.secondary.end == 0xF8000
    single = slots.geometry("single-slot", sector_size=4096)
    assert single.secondary is None and single.scratch is None


def test_overlapping_partitions_through_the_loader(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        "settings_storage:\n  address: 0xf8000\n  end_address: 0x100000",
        "settings_storage:\n  address: 0xf0000\n  end_address: 0xf8000",
    )
    with pytest.raises(InputError) as info:
        load_farm(farm_with(tmp_path, text))
    (p,) = info.value.problems
    assert (p.file, p.line, p.field) == (str(tmp_path / "pm_static.yml"), 58, "settings_storage")
    assert "overlaps mcuboot_secondary" in p.message
    assert f"read for flash layout 'pm', {tmp_path / 'boards.yaml'}:5" in p.message


def test_pm_partitions_must_be_whole_pages_unless_inside_a_span(tmp_path: Path) -> None:
    text = (
        EXAMPLE.read_text()
        .replace("size: 0x8000", "size: 0x7F00")
        .replace("end_address: 0x100000", "end_address: 0xfff00")
    )
    with pytest.raises(InputError) as info:
        load_farm(farm_with(tmp_path, text))
    (p,) = info.value.problems  # app and mcuboot_pad (0xC200, 0x200) are fine: inside a span
    assert (p.line, p.field) == (5, "flash_layouts.pm.pm_static")
    assert "partition 'settings_storage': size 0x7F00 is not a multiple" in p.message


def test_pm_partition_beyond_flash(tmp_path: Path) -> None:
    farm = FARM.replace("nRF52840_xxAA", "nRF52833_xxAA")
    with pytest.raises(InputError) as info:
        load_farm(farm_with(tmp_path, EXAMPLE.read_text(), farm))
    messages = [p.message for p in info.value.problems]
    assert any(
        "partition 'mcuboot_secondary': ends at 0xF8000, beyond the end" in m for m in messages
    )


def test_layout_needs_exactly_one_source(tmp_path: Path) -> None:
    both = FARM.replace(
        "pm_static: pm_static.yml",
        "pm_static: pm_static.yml\n    regions: {a: {start: 0, size: 4096}}",
    )
    for farm in (both, FARM.replace("    pm_static: pm_static.yml\n", "")):
        with pytest.raises(InputError) as info:
            load_farm(farm_with(tmp_path, EXAMPLE.read_text(), farm))
        (p,) = info.value.problems
        assert p.field == "flash_layouts.pm" and "exactly one of 'regions'" in p.message


def test_missing_pm_file_is_located_in_the_farm_file(tmp_path: Path) -> None:
    path = tmp_path / "boards.yaml"
    path.write_text(FARM)
    with pytest.raises(InputError) as info:
        load_farm(path)
    (p,) = info.value.problems
    assert p.file == str(tmp_path / "pm_static.yml") and "not found" in p.message
    assert "boards.yaml:5" in p.message


def test_layout_hash_includes_containers() -> None:
    chip = CHIPS["nrf52840_xxaa"]
    regions = {"a": Region("a", 0, 4096)}
    assert hash(FlashLayout("x", chip, regions)) != hash(
        FlashLayout("x", chip, regions, containers=frozenset({"a"}))
    )
