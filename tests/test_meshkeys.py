"""Mesh DFU signing keys against python-ecdsa, the library nrfutil's mesh branch signed with.

Every check crosses the boundary in both directions: keys and signatures python-ecdsa makes
(i.e. `nrfutil keys --gen-key` and `nrfutil dfu genpkg --key-file`) must work here, and ours
must work there.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import ecdsa
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from ecdsa.util import sigencode_string

from dfuhil.errors import InputError
from dfuhil.formats.meshkeys import (
    generate_key,
    load_key,
    public_key_bytes,
    public_key_from_hex,
    public_key_pem,
    sign,
    verification_key_code,
    verification_key_lines,
    verify,
    write_key,
)

MESSAGE = b"\x04\xff\xff\xff\xff\x00\x04\x00\x00\x00" + bytes(range(256)) * 4

# The order n of P-256 (FIPS 186-4 D.1.2.3): s = n is out of range for any valid signature.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def nrfutil_key(path: Path) -> ecdsa.SigningKey:
    """Exactly what `nrfutil keys --gen-key` wrote (signing.py: to_pem() on NIST256p)."""
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    path.write_bytes(sk.to_pem())
    return sk


def flip_bit(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- keys written by python-ecdsa / nrfutil ---------------------------------------------------


def test_ecdsa_to_pem_is_a_bare_sec1_block(tmp_path: Path) -> None:
    """What load_key has to accept first: ecdsa 0.19.2 writes no EC PARAMETERS block."""
    path = tmp_path / "private_key.txt"
    nrfutil_key(path)
    text = path.read_text()
    assert text.startswith("-----BEGIN EC PRIVATE KEY-----\n")
    assert text.endswith("-----END EC PRIVATE KEY-----\n")
    assert "EC PARAMETERS" not in text


def test_nrfutil_key_loads_and_shows_the_same_verification_key(tmp_path: Path) -> None:
    path = tmp_path / "private_key.txt"
    sk = nrfutil_key(path)
    key = load_key(path)
    raw = sk.get_verifying_key().to_string()  # Qx || Qy, what nrfutil hexlifies
    assert public_key_bytes(key) == raw
    assert verification_key_lines(key) == [
        "Verification key Qx: " + raw[:32].hex(),
        "Verification key Qy: " + raw[32:].hex(),
    ]
    assert all(line[21:] == line[21:].lower() for line in verification_key_lines(key))


def test_show_vk_code_and_pem_match_nrfutil(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    sk = nrfutil_key(path)
    key = load_key(path)
    vk = sk.get_verifying_key()
    x, y = vk.to_string()[:32], vk.to_string()[32:]
    assert verification_key_code(key) == [
        "static uint8_t Qx[] = { " + ", ".join(f"0x{b:02x}" for b in x) + " };",
        "static uint8_t Qy[] = { " + ", ".join(f"0x{b:02x}" for b in y) + " };",
    ]
    assert public_key_pem(key) == vk.to_pem().decode()


def test_pkcs8_and_openssl_ecparam_files_load(tmp_path: Path) -> None:
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    pkcs8 = tmp_path / "pkcs8.pem"
    pkcs8.write_bytes(sk.to_pem(format="pkcs8"))
    assert pkcs8.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    # `openssl ecparam -genkey -name prime256v1` puts an EC PARAMETERS block first.
    with_params = tmp_path / "ecparam.pem"
    with_params.write_bytes(ecdsa.NIST256p.to_pem() + sk.to_pem())
    assert with_params.read_text().startswith("-----BEGIN EC PARAMETERS-----")
    # The ecdsa 0.13 that nrfutil ran on wrapped base64 at 64 characters, not 76.
    body = "".join(sk.to_pem().decode().splitlines()[1:-1])
    wrapped = [body[i : i + 64] for i in range(0, len(body), 64)]
    old_ecdsa = tmp_path / "ecdsa013.pem"
    old_ecdsa.write_text(
        "\n".join(["-----BEGIN EC PRIVATE KEY-----", *wrapped, "-----END EC PRIVATE KEY-----", ""])
    )
    for path in (pkcs8, with_params, old_ecdsa):
        assert public_key_bytes(load_key(path)) == sk.get_verifying_key().to_string()


# --- keys written by us ------------------------------------------------------------------------


def test_our_key_file_is_byte_identical_to_what_ecdsa_writes(tmp_path: Path) -> None:
    path = tmp_path / "ours.pem"
    key = generate_key()
    write_key(key, path)
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    sk = ecdsa.SigningKey.from_pem(data)
    assert sk.curve == ecdsa.NIST256p
    assert sk.to_pem() == data
    assert sk.get_verifying_key().to_string() == public_key_bytes(key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_write_key_refuses_to_replace_a_key_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    first = generate_key()
    write_key(first, path)
    with pytest.raises(InputError, match="already exists"):
        write_key(generate_key(), path)
    assert public_key_bytes(load_key(path)) == public_key_bytes(first)
    second = generate_key()
    write_key(second, path, overwrite=True)
    assert public_key_bytes(load_key(path)) == public_key_bytes(second)


# --- signatures across the boundary ------------------------------------------------------------


def test_our_signature_verifies_with_ecdsa(tmp_path: Path) -> None:
    key = generate_key()
    signature = sign(key, MESSAGE)
    assert len(signature) == 64
    vk = ecdsa.VerifyingKey.from_string(public_key_bytes(key), curve=ecdsa.NIST256p)
    assert vk.verify(signature, MESSAGE, hashfunc=hashlib.sha256)
    with pytest.raises(ecdsa.BadSignatureError):
        vk.verify(flip_bit(signature, 40), MESSAGE, hashfunc=hashlib.sha256)
    with pytest.raises(ecdsa.BadSignatureError):
        vk.verify(signature, flip_bit(MESSAGE, 12), hashfunc=hashlib.sha256)


def test_ecdsa_signature_verifies_with_ours(tmp_path: Path) -> None:
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    public = sk.get_verifying_key().to_string()
    # signing.py: sk.sign(data, hashfunc=hashlib.sha256, sigencode=sigencode_string)
    signature = sk.sign(MESSAGE, hashfunc=hashlib.sha256, sigencode=sigencode_string)
    assert verify(public, MESSAGE, signature)
    assert not verify(public, MESSAGE, flip_bit(signature, 0))
    assert not verify(public, MESSAGE, flip_bit(signature, 63))
    assert not verify(public, flip_bit(MESSAGE, len(MESSAGE) - 1), signature)
    other = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).get_verifying_key().to_string()
    assert not verify(other, MESSAGE, signature)


def test_verify_says_false_for_malformed_input_instead_of_raising() -> None:
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    public = sk.get_verifying_key().to_string()
    signature = sk.sign(MESSAGE, hashfunc=hashlib.sha256, sigencode=sigencode_string)
    assert verify(public, MESSAGE, signature)  # the baseline the cases below break
    off_curve = (1).to_bytes(32, "big") * 2
    assert not verify(public[:63], MESSAGE, signature)
    assert not verify(b"\x00" * 64, MESSAGE, signature)
    assert not verify(off_curve, MESSAGE, signature)
    assert not verify(public, MESSAGE, signature[:63])
    assert not verify(public, MESSAGE, signature + b"\x00")
    assert not verify(public, MESSAGE, b"\x00" * 64)
    assert not verify(public, MESSAGE, signature[:32] + P256_N.to_bytes(32, "big"))


# --- keys dfuhil must refuse -------------------------------------------------------------------


def _pkcs8(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


BAD_KEYS = {
    "rsa": (_pkcs8(rsa.generate_private_key(65537, 2048)), "type RSA"),
    "ed25519": (_pkcs8(ed25519.Ed25519PrivateKey.generate()), "type Ed25519"),
    "p384": (ecdsa.SigningKey.generate(curve=ecdsa.NIST384p).to_pem(), "secp384r1"),
    "public-only": (
        ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).get_verifying_key().to_pem(),
        "only a public key",
    ),
    "encrypted": (
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "encrypted",
    ),
    "rsa-traditional": (
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        "type RSA",
    ),
    "encrypted-sec1": (
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "encrypted",
    ),
    "truncated": (
        ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).to_pem()[:100],
        "no END line",
    ),
    "garbage": (b"this is not a key\n", "not a PEM file"),
    "empty": (b"", "not a PEM file"),
    "broken-base64": (
        b"-----BEGIN EC PRIVATE KEY-----\nAAAA!!!!\n-----END EC PRIVATE KEY-----\n",
        "cannot be decoded",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_unusable_key_files_are_input_errors_with_the_remedy(tmp_path: Path, case: str) -> None:
    content, reason = BAD_KEYS[case]
    path = tmp_path / f"{case}.pem"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_key(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert reason in message
    assert "P-256" in message
    assert "dfuhil mesh keys --gen-key FILE" in message


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pem"
    with pytest.raises(InputError, match=r"nowhere\.pem: key file not found.*--gen-key"):
        load_key(path)
    with pytest.raises(InputError, match="is a directory"):
        load_key(tmp_path)


# --- the device page config's public_key --------------------------------------------------------


def test_public_key_from_hex_accepts_show_vk_output() -> None:
    raw = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).get_verifying_key().to_string()
    assert public_key_from_hex(raw.hex()) == raw
    assert public_key_from_hex(raw.hex().upper()) == raw
    assert public_key_from_hex(raw[:32].hex() + "\n  " + raw[32:].hex()) == raw


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ab" * 63, "128 hex characters"),
        ("ab" * 65, "128 hex characters"),
        ("zz" * 64, "128 hex characters"),
        ((1).to_bytes(32, "big").hex() * 2, "not a point on P-256"),
    ],
)
def test_public_key_from_hex_rejects(text: str, expected: str) -> None:
    with pytest.raises(InputError) as caught:
        public_key_from_hex(text, file="cfg.json")
    assert str(caught.value).startswith("cfg.json: public_key: ")
    assert expected in str(caught.value)
