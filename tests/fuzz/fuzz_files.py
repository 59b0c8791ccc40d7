"""Fuzz targets for every file dfuhil reads: each a seed, a mutating strategy and a runner.

The tests (test_fuzz_files.py) run each target for a small deterministic budget; the campaign
(campaign.py, ``make fuzz``) runs them long. Library targets call the parser and then what a
caller does with the result (describe it, verify it), because a crash in ``describe()`` is a
crash of ``dfuhil ... show``. Command-line targets run ``dfuhil`` in-process on the mutated file.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from fuzz_harness import FuzzTarget, Outcome, run, run_cli
from fuzz_strategies import (
    YAML_SNIPPETS,
    Field,
    json_text,
    mutated_bytes,
    mutated_text,
    mutated_tree,
)
from hypothesis import strategies as st
from intelhex import IntelHex
from ruamel.yaml import YAML

from dfuhil.formats import devpage, meshkeys, meshpkg
from dfuhil.formats.chips import find_chip
from dfuhil.formats.hexfile import hex_text
from dfuhil.formats.image import FlashImage
from dfuhil.formats.mcuboot import (
    ImageFormatError,
    KeyFileError,
    PublicKey,
    parse_image,
    read_slot_image,
    verify_signature,
)
from dfuhil.formats.mcuboot_trailer import Mode, TrailerLayout, decide_swap, read_trailer
from dfuhil.formats.pm_static import parse_pm_static
from dfuhil.formats.softdevice import find_softdevice

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(tempfile.mkdtemp(prefix="dfuhil-fuzz-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


def _place(target: str, name: str, data: bytes) -> Path:
    folder = WORK / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# --- seeds -------------------------------------------------------------------------------------


@functools.cache
def boards_yaml() -> str:
    return (ROOT / "boards.yaml").read_text(encoding="utf-8")


@functools.cache
def pm_static_yaml() -> str:
    return (ROOT / "examples" / "pm_static_nrf52840.yml").read_text(encoding="utf-8")


def _yaml_tree(text: str) -> Any:
    return YAML(typ="safe").load(text)


def _yaml_dump(doc: Any) -> bytes:
    out = io.StringIO()
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    try:
        yaml.dump(doc, out)
    except Exception:  # a value the emitter cannot write (e.g. a lone NUL): keep it as text
        return json.dumps(doc, default=str).encode()
    return out.getvalue().encode("utf-8", errors="surrogatepass")


def yaml_documents(seed: str) -> st.SearchStrategy[bytes]:
    """A YAML file mutated as a tree (wrong types, missing keys) or as text (hand edits)."""
    tree = _yaml_tree(seed)
    return st.one_of(
        mutated_tree(tree).map(_yaml_dump),
        mutated_text(seed, YAML_SNIPPETS),
    )


def json_documents(seed: Any) -> st.SearchStrategy[bytes]:
    text = json.dumps(seed, indent=2)
    return st.one_of(
        mutated_tree(seed).map(lambda d: json_text(d).encode()),
        mutated_text(text, ('"x": 1,\n', "{", "]", '"bootloader_id": 1e999,\n', "// c\n")),
    )


SMALL_APP = bytes((i * 13 + 5) & 0xFF for i in range(200))


@functools.cache
def app_hex() -> str:
    ih = IntelHex()
    ih.frombytes(SMALL_APP, offset=0x27000)
    return hex_text(ih)


def _record(kind: int, address: int, data: bytes, good_sum: bool) -> str:
    raw = bytes([len(data), address >> 8 & 0xFF, address & 0xFF, kind]) + data
    checksum = (-sum(raw)) & 0xFF if good_sum else (sum(raw) + 1) & 0xFF
    return ":" + (raw + bytes([checksum])).hex().upper() + "\n"


@st.composite
def hex_records(draw: st.DrawFn) -> bytes:
    """Intel HEX built record by record: every record type, far addresses, bad checksums."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 4, 5]))
        if kind == 0:
            data = draw(st.binary(min_size=0, max_size=24))
        elif kind in (2, 4):
            data = draw(st.sampled_from([0, 1, 2, 0xFF, 0x0FFF, 0x1000, 0x7FFF, 0xFFFF])).to_bytes(
                2, "big"
            )
        elif kind in (3, 5):
            data = draw(st.binary(min_size=4, max_size=4))
        else:
            data = b""
        if draw(st.integers(0, 9)) == 0:
            data = draw(st.binary(max_size=6))  # a record of the wrong length for its type
        address = draw(st.sampled_from([0, 0x27000 & 0xFFFF, 0xFFF0, 0xFFFF]))
        lines.append(_record(kind, address, data, good_sum=draw(st.integers(0, 9)) > 0))
    if draw(st.booleans()):
        lines.append(":00000001FF\n")
    return "".join(lines).encode()


def hex_files() -> st.SearchStrategy[bytes]:
    return st.one_of(hex_records(), mutated_text(app_hex(), (":00000001FF\n", ":02000004FFFF\n")))


@functools.cache
def device_page() -> tuple[int, bytes]:
    chip = find_chip("nRF52840_xxAA")
    sd = find_softdevice("s140_7.2.0")
    assert chip is not None and sd is not None
    entries = devpage.device_page_entries(chip, sd, devpage.BootloaderConfig())
    return chip.device_page_address, entries


def _entry_fields(entries: bytes) -> list[Field]:
    fields: list[Field] = [(0, 1), (0, 4)]
    offset = entries[0]
    while offset + 4 <= len(entries):
        length = int.from_bytes(entries[offset : offset + 2], "little")
        fields += [(offset, 2), (offset + 2, 2), (offset + 4, 4)]
        if length == 0 or int.from_bytes(entries[offset + 2 : offset + 4], "little") == 0x7FFF:
            break
        offset += length * 4
    return fields


def device_page_hexes() -> st.SearchStrategy[bytes]:
    address, entries = device_page()

    def render(page: bytes) -> bytes:
        ih = IntelHex()
        if page:
            ih.frombytes(page, offset=address)
        return hex_text(ih, 16).encode()

    return st.one_of(
        mutated_bytes(entries, _entry_fields(entries)).map(render),
        mutated_text(render(entries).decode(), (":00000001FF\n",)),
    )


BOOTLOADER_CONFIG = {
    "bootloader_config": {
        "bootloader_id": 1,
        "bootloader_version": 1,
        "company_id": 89,
        "application_id": 1,
        "application_version": 1,
        "public_key": "00" * 64,
    }
}


@functools.cache
def mesh_key() -> meshkeys.SigningKey:
    return meshkeys.generate_key()


@functools.cache
def mesh_package_members(signed: bool) -> dict[str, bytes]:
    hex_path = _place("seed", "app.hex", app_hex().encode())
    pkg = meshpkg.MeshPackage.build(
        hex_path, 0x59, 1, 2, key=mesh_key() if signed else None, name="app"
    )
    return {
        meshpkg.MANIFEST_NAME: meshpkg.manifest_text(pkg.manifest).encode(),
        pkg.bin_name: pkg.image,
        pkg.dat_name: pkg.init.encode(),
    }


DAT_FIELDS: list[Field] = [(0, 1), (1, 4), (5, 4), (9, 1), (10, 4), (14, 2), (16, 4)]


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@st.composite
def mesh_zips(draw: st.DrawFn) -> bytes:
    """A valid package with one part broken: manifest, .dat, .bin, the member list, the zip."""
    members = dict(mesh_package_members(draw(st.booleans())))
    part = draw(st.sampled_from(["manifest", "dat", "bin", "members", "zip"]))
    if part == "manifest":
        tree = json.loads(members[meshpkg.MANIFEST_NAME])
        members[meshpkg.MANIFEST_NAME] = json_text(draw(mutated_tree(tree))).encode()
    elif part == "dat":
        members["app.dat"] = draw(mutated_bytes(members["app.dat"], DAT_FIELDS))
    elif part == "bin":
        members["app.bin"] = draw(mutated_bytes(members["app.bin"]))
    elif part == "members":
        name = draw(st.sampled_from(sorted(members)))
        if draw(st.booleans()):
            del members[name]
        else:
            members[name + draw(st.sampled_from(["/", "x", "/../evil"]))] = members.pop(name)
    data = _zip(members)
    if part == "zip":
        data = draw(mutated_bytes(data))
    return data


def _pem_variants() -> list[bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    return [
        meshkeys.private_key_pem(mesh_key()),
        meshkeys.public_key_pem(mesh_key()).encode(),
        p384.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    ]


@functools.cache
def pem_seeds() -> tuple[bytes, ...]:
    return tuple(_pem_variants())


@st.composite
def pem_files(draw: st.DrawFn) -> bytes:
    """A PEM key with its DER damaged inside intact armour, or the armour itself damaged."""
    import base64

    seed = draw(st.sampled_from(pem_seeds()))
    text = seed.decode()
    if draw(st.booleans()):
        lines = text.strip().splitlines()
        der = base64.b64decode("".join(lines[1:-1]))
        der = draw(mutated_bytes(der, [(1, 1), (3, 1), (5, 1), (6, 1)]))
        body = base64.encodebytes(der).decode()
        return f"{lines[0]}\n{body}{lines[-1]}\n".encode()
    return draw(
        mutated_text(text, ("-----BEGIN EC PRIVATE KEY-----\n", "-----END PUBLIC KEY-----\n"))
    )


# --- MCUboot images --------------------------------------------------------------------------

SLOT_SIZE = 0x4000


@functools.cache
def mcuboot_keys() -> dict[str, Path]:
    from dfuhil.procedures.image_sign import generate_key

    keys = {}
    for kind in ("ecdsa-p256", "ed25519"):
        path = WORK / "seed" / f"{kind}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_key(path, kind)
        keys[kind] = path
    return keys


@functools.cache
def mcuboot_images() -> tuple[bytes, ...]:
    """Signed images: P-256 plain, Ed25519 with a protected TLV, P-256 padded and confirmed."""
    from dfuhil.procedures.image_sign import SignParams, sign_image

    body = bytes((i * 7 + 3) & 0xFF for i in range(512))
    keys = mcuboot_keys()
    padded = SignParams(slot_size=SLOT_SIZE)
    return (
        sign_image(body, keys["ecdsa-p256"], "1.2.3+4"),
        sign_image(body, keys["ed25519"], "2.0.0", security_counter=7),
        sign_image(body, keys["ecdsa-p256"], "1.0.0", params=padded, confirm=True),
    )


def _image_fields(image: bytes) -> list[Field]:
    """Header fields, the TLV info words and every TLV entry's type and length."""
    fields: list[Field] = [(0, 4), (4, 4), (8, 2), (10, 2), (12, 4), (16, 4), (20, 1), (22, 2)]
    parsed = parse_image(image)
    start = parsed.header.hdr_size + parsed.header.img_size
    fields += [(start, 2), (start + 2, 2)]
    prot = parsed.header.protect_tlv_size
    if prot:
        fields += [(start + prot, 2), (start + prot + 2, 2)]
    for tlv in parsed.tlvs:
        fields += [(tlv.offset, 2), (tlv.offset + 2, 2)]
    return fields


@st.composite
def mcuboot_files(draw: st.DrawFn) -> bytes:
    image = draw(st.sampled_from(mcuboot_images()))
    return draw(mutated_bytes(image, _image_fields(image)))


@functools.cache
def trusted_key() -> PublicKey:
    return PublicKey.from_pem(mcuboot_keys()["ecdsa-p256"].read_bytes())


def _use_image(data: bytes) -> None:
    """What ``image show``/``check`` and the SMP host do with a parsed image."""
    image = parse_image(data, source="fuzz.bin")
    str(image.version)
    image.header.flag_names()
    _ = image.image_hash, image.hash_ok, image.key_hash, image.security_counter, image.body
    _ = [tlv.name for tlv in image.tlvs]
    verify_signature(image, trusted_key())


def _use_slot(data: bytes) -> None:
    """The virtual MCUboot's and the host's view of a slot: image, then trailer and decision."""
    slot = (data + b"\xff" * SLOT_SIZE)[:SLOT_SIZE]

    def read(address: int, length: int) -> bytes:
        return slot[address : address + length]

    read_slot_image(read, 0, SLOT_SIZE, source="fuzz slot")
    for mode in ("swap-move", "swap-scratch", "overwrite-only", "direct-xip"):
        for align in (8, 16, 32):
            layout = TrailerLayout.for_mode(_mode(mode), SLOT_SIZE, max_align=align)
            state = read_trailer(read, 0, layout)
            state.describe()
            decide_swap(state, state)


def _mode(name: str) -> Mode:
    return name  # type: ignore[return-value]


# --- the targets -------------------------------------------------------------------------------


def _farm_dir(name: str) -> Path:
    """A folder laid out like the repository (firmware/, examples/) for boards.yaml files."""
    folder = WORK / name
    if not folder.exists():
        folder.mkdir(parents=True)
        (folder / "firmware").symlink_to(ROOT / "firmware")
        shutil.copytree(ROOT / "examples", folder / "examples")
        (folder / "boards.yaml").write_text(boards_yaml(), encoding="utf-8")
    return folder


def run_boards_library(data: bytes) -> Outcome:
    from dfuhil.farm.loader import load_farm

    path = _farm_dir("boards-lib") / "fuzz-boards.yaml"
    path.write_bytes(data)
    return run(lambda: load_farm(path))


def run_boards_cli(data: bytes) -> Outcome:
    path = _farm_dir("boards-cli") / "fuzz-boards.yaml"
    path.write_bytes(data)
    return run_cli(["boards", "check", str(path)], names=(path.name,))


def run_pm_static_library(data: bytes) -> Outcome:
    def parse() -> None:
        text = data.decode("utf-8", errors="replace")
        table = parse_pm_static(text, source="pm_static.yml")
        _ = table.nested, [table.members(p.name) for p in table.partitions]

    return run(parse)


def run_pm_static_cli(data: bytes) -> Outcome:
    folder = _farm_dir("pm-cli")
    pm = folder / "examples" / "pm_static_nrf52840.yml"
    pm.write_bytes(data)
    return run_cli(["boards", "check", str(folder / "boards.yaml")], names=(pm.name, "boards.yaml"))


def run_hex_library(data: bytes) -> Outcome:
    path = _place("hex-lib", "fuzz.hex", data)
    chip = find_chip("nRF52840_xxAA")
    assert chip is not None

    def load() -> None:
        image = FlashImage.load(path)
        _ = image.sha256, image.flash_span(), image.uicr_words(chip)
        image.pages(chip)

    return run(load)


def run_hex_to_bin(data: bytes) -> Outcome:
    path = _place("hex-bin", "fuzz.hex", data)
    return run(lambda: meshpkg.hex_to_bin(path))


def run_hex_cli(data: bytes) -> Outcome:
    path = _place("hex-cli", "fuzz.hex", data)
    out = WORK / "hex-cli" / "out.zip"
    argv = ["mesh", "genpkg", str(out), "--application", str(path)]
    argv += ["--company-id", "0x59", "--application-id", "1", "--application-version", "2"]
    return run_cli(argv, names=(path.name,))


def run_devpage_library(data: bytes) -> Outcome:
    address, _entries = device_page()
    page = (data + b"\xff" * 4096)[:4096]

    def parse() -> None:
        parsed = devpage.DevicePage.parse(page, address, backup=page)
        if parsed is not None:
            devpage.describe(parsed)
            parsed.missing_required()
            _ = parsed.banks, parsed.version, parsed.public_key, parsed.free_bytes

    return run(parse)


def run_devpage_cli(data: bytes) -> Outcome:
    path = _place("devpage-cli", "fuzz.hex", data)
    return run_cli(["devpage", "--show", str(path), "-d", "nRF52840_xxAA"], names=(path.name,))


def run_config_library(data: bytes) -> Outcome:
    path = _place("config-lib", "fuzz.json", data)
    return run(lambda: devpage.load_bootloader_config(path))


def run_config_cli(data: bytes) -> Outcome:
    path = _place("config-cli", "fuzz.json", data)
    out = WORK / "config-cli" / "page.hex"
    return run_cli(["devpage", "-c", str(path), "-o", str(out)], names=(path.name,))


def run_meshpkg_library(data: bytes) -> Outcome:
    path = _place("meshpkg-lib", "fuzz.zip", data)

    def read() -> None:
        pkg = meshpkg.read_package(path)
        meshpkg.describe(pkg)

    return run(read)


def run_meshpkg_cli(data: bytes) -> Outcome:
    path = _place("meshpkg-cli", "fuzz.zip", data)
    return run_cli(["mesh", "show", str(path)], names=(path.name,))


def run_meshkey_library(data: bytes) -> Outcome:
    path = _place("meshkey-lib", "fuzz.pem", data)

    def load() -> None:
        key = meshkeys.load_key(path)
        meshkeys.verification_key_lines(key)

    return run(load)


def run_meshkey_cli(data: bytes) -> Outcome:
    path = _place("meshkey-cli", "fuzz.pem", data)
    return run_cli(["mesh", "keys", str(path), "--show-vk", "hex"], names=(path.name,))


def run_mcuboot_key_library(data: bytes) -> Outcome:
    return run(lambda: PublicKey.from_pem(data, source="fuzz.pem").key_hash, named=(KeyFileError,))


def run_mcuboot_key_cli(data: bytes) -> Outcome:
    image = _place("mcukey-cli", "image.bin", mcuboot_images()[0])
    path = _place("mcukey-cli", "fuzz.pem", data)
    return run_cli(["image", "show", str(image), "-k", str(path)], names=(path.name,))


def run_mcuboot_library(data: bytes) -> Outcome:
    return run(lambda: _use_image(data), named=(ImageFormatError,))


def run_mcuboot_slot(data: bytes) -> Outcome:
    return run(lambda: _use_slot(data), named=(ImageFormatError,))


def run_mcuboot_cli(data: bytes) -> Outcome:
    path = _place("mcuboot-cli", "fuzz.bin", data)
    return run_cli(["image", "show", str(path)], names=(path.name,))


TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget("boards.yaml", yaml_documents(boards_yaml()), run_boards_library),
        FuzzTarget("boards.yaml (cli)", yaml_documents(boards_yaml()), run_boards_cli),
        FuzzTarget("pm_static.yml", yaml_documents(pm_static_yaml()), run_pm_static_library),
        FuzzTarget("pm_static.yml (cli)", yaml_documents(pm_static_yaml()), run_pm_static_cli),
        FuzzTarget("intel hex", hex_files(), run_hex_library),
        FuzzTarget("intel hex -> mesh bin", hex_files(), run_hex_to_bin),
        FuzzTarget("intel hex (cli)", hex_files(), run_hex_cli),
        FuzzTarget(
            "device page",
            st.deferred(lambda: mutated_bytes(device_page()[1], _entry_fields(device_page()[1]))),
            run_devpage_library,
        ),
        FuzzTarget("device page hex (cli)", st.deferred(device_page_hexes), run_devpage_cli),
        FuzzTarget("bootloader_config json", json_documents(BOOTLOADER_CONFIG), run_config_library),
        FuzzTarget(
            "bootloader_config json (cli)", json_documents(BOOTLOADER_CONFIG), run_config_cli
        ),
        FuzzTarget("mesh dfu zip", mesh_zips(), run_meshpkg_library),
        FuzzTarget("mesh dfu zip (cli)", mesh_zips(), run_meshpkg_cli),
        FuzzTarget("mesh key", pem_files(), run_meshkey_library),
        FuzzTarget("mesh key (cli)", pem_files(), run_meshkey_cli),
        FuzzTarget("mcuboot key", pem_files(), run_mcuboot_key_library),
        FuzzTarget("mcuboot key (cli)", pem_files(), run_mcuboot_key_cli),
        FuzzTarget("mcuboot image", mcuboot_files(), run_mcuboot_library),
        FuzzTarget("mcuboot slot + trailer", mcuboot_files(), run_mcuboot_slot),
        FuzzTarget("mcuboot image (cli)", mcuboot_files(), run_mcuboot_cli),
    )
}
