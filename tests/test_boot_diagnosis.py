"""Boot-log diagnosis: MCUboot's failure lines, in every log format, turned into cause + fix."""

from __future__ import annotations

import pytest

from dfuhil.procedures.boot_diagnosis import diagnose, message_of

NORMAL_BOOT = """\
*** Booting MCUboot v2.1.0 ***
*** Using Zephyr OS build v3.7.99-ncs1 ***
I: Starting bootloader
I: Primary image: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3
I: Secondary image: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3
I: Boot source: none
I: Image index: 0, Swap type: none
I: Bootloader chainload address offset: 0xc000
I: Image version: v1.0.0
I: Jumping to the first image slot
*** Booting Zephyr OS build v3.7.99-ncs1 ***
"""

CORRUPT_PRIMARY = """\
*** Booting MCUboot v2.1.0 ***
I: Starting bootloader
I: Primary image: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3
I: Secondary image: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3
I: Boot source: none
I: Image index: 0, Swap type: none
E: Image in the primary slot is not valid!
E: Unable to find bootable image
"""

REVERT = """\
I: Starting bootloader
I: Primary image: magic=good, swap_type=0x2, copy_done=0x1, image_ok=0x3
I: Secondary image: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3
I: Boot source: none
I: Image index: 0, Swap type: revert
I: Image index: 0, Swap type: revert
I: Starting swap using move algorithm.
I: Bootloader chainload address offset: 0xc000
I: Image version: v1.0.0
I: Jumping to the first image slot
"""


def test_a_normal_boot_is_ok_and_boot_source_none_is_explained_as_normal() -> None:
    result = diagnose(NORMAL_BOOT)
    assert result.ok
    assert result.boots == 1
    assert result.booted_version == "1.0.0"
    (finding,) = result.findings
    assert finding.rule == "boot-source-none"
    assert finding.severity == "info"
    assert "normal" in finding.cause


def test_corrupt_primary_names_the_key_and_the_check_and_blames_not_boot_source() -> None:
    result = diagnose(CORRUPT_PRIMARY)
    assert not result.ok
    assert [f.rule for f in result.findings] == [
        "boot-source-none",
        "primary-invalid",
        "no-bootable-image",
    ]
    primary = result.findings[1]
    assert primary.line_no == 7
    assert "key" in primary.cause and "dfuhil image check" in primary.fix
    assert "real problem" in result.findings[0].cause  # not "normal" when the boot failed
    assert result.booted_version is None
    text = str(result)
    assert "Image in the primary slot is not valid!" in text and "fix:" in text


def test_revert_is_reported_once_per_boot_with_the_confirm_advice() -> None:
    result = diagnose(REVERT)
    reverts = [f for f in result.findings if f.rule == "revert"]
    assert len(reverts) == 1
    assert "confirm" in reverts[0].fix
    assert not result.ok  # a warning: a person should know the test image was reverted


@pytest.mark.parametrize(
    ("line", "rule", "needle"),
    [
        ("E: Image in the secondary slot is not valid!", "secondary-invalid", "erased"),
        ("E: Bad image magic 0xffffffff; Image=0", "bad-magic", "erased"),
        ("E: Bad image magic 0x12345678; Image=0", "bad-magic", "0x12345678"),
        ("W: Cannot upgrade: not same sector layout", "cannot-upgrade", "not same sector layout"),
        ("W: Not enough free space to run swap upgrade", "not-enough-space", "spare sector"),
        ("E: Insufficient version in secondary slot", "downgrade-refused", "lower"),
        # MCUboot v2.1.0's own spelling (loader.c:1010, loader.c:2320)
        ("E: insufficient version in secondary slot", "downgrade-refused", "lower"),
        ("E: bad image magic 0xffffffff; Image=0", "bad-magic", "erased"),
        ("I: Image 0 in slot 1 erased due to downgrade prevention", "downgrade-refused", "lower"),
        ("E: Image size bigger than designated area: 500000 > 483328", "too-large", "483328"),
        (
            "Error: Image size (0x7a000) + trailer (0x2000) exceeds requested size 0x76000",
            "too-large",
            "too large for the internal-flash",
        ),
        ("E: Image not bootable", "not-bootable", "NON_BOOTABLE"),
        ("E: panic!", "panic", "PANIC"),
        ("I: Enter the serial recovery mode", "serial-recovery", "serial recovery"),
        (
            "E: >>> ZEPHYR FATAL ERROR 0: CPU exception on CPU 0",
            "zephyr-fatal",
            "CPU exception",
        ),
        ("E: ***** BUS FAULT *****", "cpu-fault", "bus fault"),
        (
            "W: Image in secondary slot at 0x82000 has been built for offset 0xc000, skipping",
            "wrong-slot-address",
            "0xc000",
        ),
    ],
)
def test_each_failure_line_has_a_cause_and_a_fix(line: str, rule: str, needle: str) -> None:
    (finding,) = diagnose(line).findings
    assert finding.rule == rule
    assert needle in finding.cause + finding.fix
    assert finding.fix


@pytest.mark.parametrize(
    "line",
    [
        "E: Image in the primary slot is not valid!",
        "[00:00:00.012,451] <err> mcuboot: Image in the primary slot is not valid!",
        "\x1b[1;31m[00:00:00.012,451] <err> mcuboot: Image in the primary slot is not valid!"
        "\x1b[0m",
        "[2024-05-01 02:13:07.412] E: Image in the primary slot is not valid!",
        "Image in the primary slot is not valid!\r",
    ],
)
def test_every_log_format_is_understood(line: str) -> None:
    assert message_of(line) == "Image in the primary slot is not valid!"
    assert diagnose(line).has("primary-invalid")


def test_a_crash_loop_is_called_a_boot_loop_and_linked_to_the_revert() -> None:
    crash = "*** Booting Zephyr OS build v3.7 ***\nE: >>> ZEPHYR FATAL ERROR 0: CPU exception\n"
    log = "I: Starting bootloader\nI: Image index: 0, Swap type: test\n" + crash
    log += "I: Starting bootloader\nI: Image index: 0, Swap type: revert\n" + crash
    result = diagnose(log)
    assert result.boots == 2
    assert any("boot loop" in n for n in result.notes)
    assert any("never confirmed" in n for n in result.notes)


def test_plain_application_output_yields_nothing() -> None:
    result = diagnose("hello\nblinky 1.0.0 running\nImage version is great\n")
    assert result.findings == ()
    assert result.ok
    assert "no MCUboot or Zephyr failure lines" in str(result)
