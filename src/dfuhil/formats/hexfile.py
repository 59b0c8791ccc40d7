"""Intel HEX in and out, the way every dfuhil file is written and read.

Reading turns intelhex's many exceptions (and a binary file's UnicodeDecodeError) into one
:class:`InputError` naming the file. Writing uses LF line ends and no start record, so files are
byte-identical across machines; the device page uses 16 data bytes per record because that is
what Nordic's device_page_generator.py (intelhex's default) writes.
"""

from __future__ import annotations

import io
from pathlib import Path

from intelhex import IntelHex, IntelHexError

from dfuhil.errors import InputError, Problem

HEX_BYTES_PER_LINE = 32
DEVICE_PAGE_BYTES_PER_LINE = 16  # what device_page_generator.py writes


def hex_text(ih: IntelHex, byte_count: int = HEX_BYTES_PER_LINE) -> str:
    """Intel HEX text with LF line ends and no start record, so files match across machines."""
    buffer = io.StringIO()
    ih.write_hex_file(buffer, write_start_addr=False, byte_count=byte_count)
    return buffer.getvalue()


def read_hex(path: str | Path, what: str = "Intel HEX file") -> IntelHex:
    """Load a hex file; any problem is an InputError naming the file."""
    ih = IntelHex()
    try:
        ih.loadhex(str(path))
    except FileNotFoundError:
        raise InputError(Problem(str(path), None, "", f"{what} not found")) from None
    except IsADirectoryError:
        raise InputError(Problem(str(path), None, "", f"is a directory, not a {what}")) from None
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot read: {exc.strerror}")) from None
    except (IntelHexError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            Problem(str(path), None, "", f"not a valid Intel HEX file ({exc}); give the .hex")
        ) from None
    return ih
