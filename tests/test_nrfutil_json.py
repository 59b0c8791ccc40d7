"""nrfutil's JSON Lines, pinned to Nordic's documented shapes: the message format of "Managing
command output for scripting" (type + data), the task_end fields Nordic's own Python example
and Zephyr's nrfutil runner read (``data.task.description``, ``data.result``, ``data.error.code``,
``data.data.devices[].serialNumber``/``traits.jlink``), task_progress's
``data.progress.progressPercentage``, and the device-info payload of the nrfutil-device changelog.
"""

from __future__ import annotations

import pytest

from dfuhil.errors import InfrastructureError, ProductError
from dfuhil.links.nrfutil_cli import NrfutilError, task_error
from dfuhil.links.nrfutil_json import parse_output

LIST_RUN = "\n".join(
    [
        '{"type":"task_begin","data":{"task":{"id":"0","description":"List devices",'
        '"name":"list","data":{}}}}',
        '{"type":"task_end","data":{"task":{"id":"0","description":"List devices","name":"list",'
        '"data":{}},"message":"","result":"success","error":null,"data":{"devices":['
        '{"serialNumber":"001050946562","traits":{"jlink":true,"devkit":true,"seggerUsb":true,'
        '"serialPorts":true,"usb":true},"devkit":{"boardVersion":"PCA10056"}}]}}}',
        "",
    ]
)

PROGRAM_FAILED = "\n".join(
    [
        '{"type":"task_begin","data":{"task":{"id":"1","description":"Programming",'
        '"name":"program","data":{"serialNumber":"000683281753"}}}}',
        '{"type":"task_progress","data":{"task":{"id":"1"},"progress":{"progressPercentage":0,'
        '"description":"Erasing","amountOfSteps":2,"step":1,"name":"erase"}}}',
        '{"type":"task_progress","data":{"task":{"id":"1"},"progress":{"progressPercentage":50,'
        '"description":"Programming","amountOfSteps":2,"step":2,"name":"program"}}}',
        '{"type":"task_end","data":{"task":{"id":"1","description":"Programming",'
        '"name":"program"},"message":"Failed","result":"fail","error":{"code":6,'
        '"description":"Verification failed: read-back differs at 0x00001000"}}}',
    ]
)


def test_list_devices_as_zephyr_reads_them() -> None:
    out = parse_output(LIST_RUN, "nrfutil --json device list")
    assert out.failed is None
    (task,) = out.tasks
    assert (task.name, task.description, task.ok) == ("list", "List devices", True)
    devices = task.data["devices"]
    assert [d["serialNumber"] for d in devices if d["traits"]["jlink"]] == ["001050946562"]


def test_progress_and_a_failed_task() -> None:
    out = parse_output(PROGRAM_FAILED, "nrfutil --json device program")
    assert out.progress == [(0, "Erasing"), (50, "Programming")]
    failed = out.failed
    assert failed is not None and failed.error_code == 6
    assert "read-back differs" in failed.error


def test_info_and_log_messages_are_kept_apart() -> None:
    text = (
        '{"type":"info","data":{"deviceInfo":{"jlink":{"boardVersion":"PCA10056",'
        '"deviceFamily":"NRF52_FAMILY","deviceVersion":"NRF52840_xxAA_REV2",'
        '"serialNumber":"000683281753"}}}}\n'
        '{"type":"log","data":{"level":"INFO","message":"Connected"}}\n'
    )
    out = parse_output(text, "nrfutil --json device device-info")
    assert out.infos[0]["deviceInfo"]["jlink"]["deviceFamily"] == "NRF52_FAMILY"
    assert out.logs == [{"level": "INFO", "message": "Connected"}]
    assert out.tasks == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Error: J-Link DLL not found\n", "not JSON"),
        ('{"type":"task_end","data":{"task":{"id":"1","descr\n', "not JSON"),  # truncated
        ('{"type":"progress","data":{}}\n', "no known 'type'"),
        ('{"type":"info","data":[1,2]}\n', "'data' is not an object"),
        ('{"type":"task_end","data":{"task":{"id":"1"}}}\n', "without task or result"),
    ],
)
def test_output_that_is_not_the_stream_is_an_infrastructure_error(text: str, why: str) -> None:
    good = '{"type":"info","data":{}}\n'
    with pytest.raises(InfrastructureError) as info:
        parse_output(good + text, "nrfutil --json device read")
    message = str(info.value)
    assert "line 2" in message and why in message and "nrfutil device --version" in message


@pytest.mark.parametrize(
    ("description", "kind", "words"),
    [
        (
            "Device not found: no device with serial number 683000009",
            InfrastructureError,
            "nrfutil device list",
        ),
        ("J-Link is in use by another process", InfrastructureError, "holds the J-Link"),
        ("Could not connect: the target has no power", InfrastructureError, "power switch"),
        ("The device is read-back protected", InfrastructureError, "allow_recover"),
        ("Verification failed: read-back differs", ProductError, "Verification failed"),
        ("Memory access failed: address 0x90000000", NrfutilError, "0x90000000"),
    ],
)
def test_failed_tasks_map_to_the_taxonomy_with_a_remedy(
    description: str, kind: type[Exception], words: str
) -> None:
    line = (
        '{"type":"task_end","data":{"task":{"id":"1","description":"Read","name":"read"},'
        f'"message":"","result":"fail","error":{{"code":1,"description":"{description}"}}}}}}'
    )
    failed = parse_output(line, "nrfutil --json device read").failed
    assert failed is not None
    error = task_error(failed, "dk-a")
    assert type(error) is kind
    assert words in str(error) and "dk-a" in str(error)
