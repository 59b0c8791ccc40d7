"""Benchmark: dfuhil's SMP serial framing (formats/smp.py) in packets per second, no I/O.

``encode_frames`` and ``SerialFrameDecoder`` on upload-sized packets (300 bytes, 4 lines of
at most 127 bytes each), the stream fed to the decoder in 512-byte reads as a UART reader gets
it. The figure says whether the framing could ever be the bottleneck: at 115200 baud a 300-byte
packet's 427 wire bytes take 37 ms, about 27 packets per second.

    .venv/bin/python bench/smp_framing.py [--packets N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import random
import time

from dfuhil.formats.smp import SerialFrameDecoder, SmpPacket, encode_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()
    rng = random.Random(1)
    packets = [rng.randbytes(args.size) for _ in range(args.packets)]
    start = time.perf_counter()
    wire = b"".join(encode_frames(p) for p in packets)
    encoded = time.perf_counter()
    decoder = SerialFrameDecoder()
    items = [i for c in range(0, len(wire), 512) for i in decoder.feed(wire[c : c + 512])]
    decoded = time.perf_counter()
    if items != [SmpPacket(p) for p in packets]:
        raise SystemExit("the decoder did not give back the packets encoded")
    print(
        f"{args.packets} packets of {args.size} B ({len(wire)} wire bytes): "
        f"encode {args.packets / (encoded - start):,.0f} packets/s, "
        f"decode {args.packets / (decoded - encoded):,.0f} packets/s"
    )


if __name__ == "__main__":
    main()
