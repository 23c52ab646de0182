"""What other Huffman tables would buy the store decode (issue 20): a measurement, not product code.

The store's JPEG chunks use libjpeg-turbo's standard Huffman tables. Optimised tables code the same
coefficients in fewer bits, which libjpeg-turbo decodes faster; its optimising encoder is too slow
for the tile stage (0.32x), and no Python binding lets the fast encoder take tables of our choosing.
This script measures what such tables would give, without an encoder: it transcodes store chunks
losslessly (same coefficients, checked: the decoded pixels are identical) with a pure-Python entropy
decoder and a numpy bit packer, to (a) **fixed tables** built once from other chunks of tissue (what
a pre-computed table per quality and subsampling would be), (b) each chunk's own optimal tables,
and times simplejpeg's decode of each against the original, alternately (CPU time, one thread).

Usage: python benchmarks/bench_huffman_tables.py [--size 30000] [--chunks 12] [--cache /tmp/wsi_mil_bench_tiling]
(train on half the sampled chunks, test on the other half; the native slide of bench_tiling.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import simplejpeg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, report  # noqa: E402
from bench_tiling import DEFAULT_CACHE, synthetic_slide, tile_stage  # noqa: E402

Key = tuple[int, int]  # (class: 0 DC / 1 AC, table id)
Table = tuple[list[int], list[int]]  # (BITS[16]: codes per length, HUFFVAL)
Symbol = tuple[Key, int, int, int]  # table, symbol, its raw bits, their count
ALL_SYMBOLS = {0: list(range(12)), 1: [0x00, 0xF0] + [r << 4 | s for r in range(16) for s in range(1, 11)]}


def segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """A baseline JPEG's marker segments up to SOS (marker, body) and its entropy-coded data."""
    i, segs = 2, []
    while True:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        segs.append((marker, data[i + 4:i + 2 + length]))
        i += 2 + length
        if marker == 0xDA:
            return segs, data[i:data.rindex(b"\xff\xd9")]


def huffman_tables(segs: list[tuple[int, bytes]]) -> dict[Key, Table]:
    tables: dict[Key, Table] = {}
    for marker, body in segs:
        i = 0
        while marker == 0xC4 and i < len(body):
            bits = list(body[i + 1:i + 17])
            tables[(body[i] >> 4, body[i] & 15)] = (bits, list(body[i + 17:i + 17 + sum(bits)]))
            i += 17 + sum(bits)
    return tables


def canonical_codes(table: Table) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length) of a JPEG Huffman table (Annex C)."""
    bits, vals = table
    out, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            out[vals[k]] = (code, length)
            k += 1
            code += 1
        code <<= 1
    return out


def mcu_layout(segs: list[tuple[int, bytes]]) -> list[tuple[int, int, int]]:
    """(blocks per MCU, DC table, AC table) of each component of the scan."""
    sof = next(b for m, b in segs if m == 0xC0)
    sos = next(b for m, b in segs if m == 0xDA)
    sampling = {sof[6 + 3 * i]: sof[7 + 3 * i] for i in range(sof[5])}
    return [((sampling[sos[1 + 2 * i]] >> 4) * (sampling[sos[1 + 2 * i]] & 15), sos[2 + 2 * i] >> 4, sos[2 + 2 * i] & 15)
            for i in range(sos[0])]


def decode_symbols(data: bytes, tables: dict[Key, Table], layout: list[tuple[int, int, int]]) -> list[Symbol]:
    """Every Huffman symbol of the entropy-coded ``data`` (no restart markers) with its raw bits, in order."""
    raw = data.replace(b"\xff\x00", b"\xff")
    bits = np.unpackbits(np.frombuffer(raw + b"\x00" * 4, np.uint8)).astype(np.int64)
    window = np.zeros(len(bits) - 16, np.int64)
    for k in range(16):  # the 16 bits from each position on
        window = window * 2 + bits[k:len(bits) - 16 + k]
    win = window.tolist()
    lookups = {}
    for key, table in tables.items():
        sym, length = np.zeros(1 << 16, np.int64), np.zeros(1 << 16, np.int64)
        for s, (c, n) in canonical_codes(table).items():
            sym[c << (16 - n):(c + 1) << (16 - n)], length[c << (16 - n):(c + 1) << (16 - n)] = s, n
        lookups[key] = (sym.tolist(), length.tolist())
    out: list[Symbol] = []
    pos, total = 0, len(raw) * 8
    while total - pos >= 8 or any(bits[pos:total] == 0):
        for n_blocks, dc, ac in layout:
            (dsym, dlen), (asym, alen) = lookups[(0, dc)], lookups[(1, ac)]
            for _ in range(n_blocks):
                s = dsym[win[pos]]
                pos += dlen[win[pos]]
                out.append(((0, dc), s, win[pos] >> (16 - s) if s else 0, s))
                pos += s
                k = 1
                while k < 64:
                    rs = asym[win[pos]]
                    pos += alen[win[pos]]
                    r, s = rs >> 4, rs & 15
                    out.append(((1, ac), rs, win[pos] >> (16 - s) if s else 0, s))
                    pos += s
                    if s == 0 and r != 15:
                        break
                    k += 16 if s == 0 else r + 1
    return out


def optimal_table(freq: dict[int, int]) -> Table:
    """The optimal length-limited JPEG table for symbol counts (Annex K.2, as libjpeg builds it)."""
    f = [0] * 257
    for s, c in freq.items():
        f[s] = c
    f[256] = 1  # reserves the all-ones code
    size, others = [0] * 257, [-1] * 257
    while True:
        live = sorted((f[i], -i) for i in range(257) if f[i])  # smallest counts; among equal ones the larger symbol
        if len(live) < 2:
            break
        c1, c2 = -live[0][1], -live[1][1]
        f[c1] += f[c2]
        f[c2] = 0
        for c in (c1, c2):
            size[c] += 1
            while others[c] >= 0:
                c = others[c]
                size[c] += 1
        c = c1
        while others[c] >= 0:
            c = others[c]
        others[c] = c2
    bits = [0] * 33
    for i in range(257):
        if size[i]:
            bits[size[i]] += 1
    for i in range(32, 16, -1):
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1
    return bits[1:17], [s for n in range(1, 33) for s in range(256) if size[s] == n]


def encode_symbols(symbols: list[Symbol], tables: dict[Key, Table]) -> bytes:
    """Entropy-coded data of ``symbols`` with ``tables`` (1-bit padding, 0xFF stuffed)."""
    codes = {key: canonical_codes(t) for key, t in tables.items()}
    vals = np.array([(codes[k][s][0] << n) | raw for k, s, raw, n in symbols], np.int64)
    lens = np.array([codes[k][s][1] + n for k, s, _, n in symbols], np.int64)
    total = int(lens.sum())
    idx = np.repeat(np.arange(len(lens)), lens)
    j = np.arange(total) - (np.cumsum(lens) - lens)[idx]
    bits = np.concatenate([((vals[idx] >> (lens[idx] - 1 - j)) & 1).astype(np.uint8), np.ones((-total) % 8, np.uint8)])
    packed = np.packbits(bits)
    return np.insert(packed, np.flatnonzero(packed == 0xFF) + 1, 0).tobytes()


def with_tables(segs: list[tuple[int, bytes]], tables: dict[Key, Table], data: bytes) -> bytes:
    dht = b"".join(bytes([tc << 4 | th]) + bytes(t[0]) + bytes(t[1]) for (tc, th), t in sorted(tables.items()))
    out = b"\xff\xd8"
    for marker, body in segs:
        if marker == 0xDA:
            out += b"\xff\xc4" + (len(dht) + 2).to_bytes(2, "big") + dht
        if marker != 0xC4:
            out += bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body
    return out + data + b"\xff\xd9"


def chunk_symbols(data: bytes) -> tuple[list[tuple[int, bytes]], list[Symbol]]:
    """A chunk's marker segments and every Huffman symbol of its scan."""
    segs, entropy = segments(data)
    return segs, decode_symbols(entropy, huffman_tables(segs), mcu_layout(segs))


def counts(symbols: list[Symbol]) -> dict[Key, dict[int, int]]:
    out: dict[Key, dict[int, int]] = {}
    for key, s, _, _ in symbols:
        out.setdefault(key, {}).setdefault(s, 0)
        out[key][s] += 1
    return out


def decode_rate(stream: bytes, buf: np.ndarray, reps: int = 5) -> float:
    t = time.process_time()
    for _ in range(reps):
        simplejpeg.decode_jpeg(stream, "RGB", buffer=buf)
    return reps / (time.process_time() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=30000, help="side of the native synthetic slide (px)")
    ap.add_argument("--chunks", type=int, default=12, help="full chunks sampled: half train the fixed tables")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    slide = synthetic_slide(args.cache, "native", args.size, 0.5)
    _, _, store = tile_stage(slide, args.cache / "job_huffman", threads="2")
    full = [j for j, (a, b) in enumerate(store.chunk_ranges()) if b - a == store.chunk_size]
    pick = np.random.default_rng(0).choice(full, min(args.chunks, len(full)), replace=False)
    chunks = [store.chunk_bytes(int(j)) for j in pick]  # the store's own JPEG bytes
    half = len(chunks) // 2
    freq = counts([s for data in chunks[:half] for s in chunk_symbols(data)[1]])
    fixed = {key: optimal_table({s: 1 + c.get(s, 0) for s in ALL_SYMBOLS[key[0]]}) for key, c in freq.items()}
    rates: dict[str, list[float]] = {"standard": [], "fixed": [], "own": []}
    size = dict.fromkeys(rates, 0)
    for data in chunks[half:]:
        segs, symbols = chunk_symbols(data)
        own = {key: optimal_table(c) for key, c in counts(symbols).items()}
        streams = {"standard": data, "fixed": with_tables(segs, fixed, encode_symbols(symbols, fixed)),
                   "own": with_tables(segs, own, encode_symbols(symbols, own))}
        ref = simplejpeg.decode_jpeg(data, "RGB")
        buf = np.empty_like(ref)
        for name, stream in streams.items():
            if not np.array_equal(simplejpeg.decode_jpeg(stream, "RGB"), ref):
                raise RuntimeError(f"chunk transcoded to {name} tables decodes to other pixels")
            size[name] += len(stream)
        for _ in range(3):
            for name, stream in streams.items():
                rates[name].append(decode_rate(stream, buf))
    base = np.array(rates["standard"])
    k = store.chunk_size
    report(f"{args.size} px native store, {len(chunks) - half} test chunks x 3 rounds (tables trained on {half}); "
           "pixels identical", [
        (f"{name} Huffman tables", f"{size[name] / size['standard']:.3f} of the bytes, "
                                   f"{np.median(rates[name]) * k:5.0f} tiles/s = {np.median(np.array(rates[name]) / base):.3f}x "
                                   f"standard (range {np.min(np.array(rates[name]) / base):.2f}-{np.max(np.array(rates[name]) / base):.2f})")
        for name in rates])


if __name__ == "__main__":
    main()
