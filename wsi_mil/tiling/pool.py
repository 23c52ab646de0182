"""Threads inside one slide: read and encode the store's chunks in parallel, hand them over in order.

Each job reads one chunk of tiles (``chunk`` tiles, padded with white like the writer pads its
last chunk) through a thread-safe :class:`~wsi_mil.tiling.readers.TileReader` and encodes it with
the store's codec (:func:`wsi_mil.stores.codecs.encode_tile_chunk`, the writer's own encoder, so
the bytes are those the single-threaded writer would write). Decoding, resampling (Pillow) and
encoding (libjpeg-turbo) release the GIL, so ``threads`` jobs run on that many cores. At most
``2 * threads`` chunks are in flight and each thread reuses one chunk buffer: memory is bounded
whatever the slide size.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from wsi_mil.stores.codecs import encode_tile_chunk

ReadFn = Callable[[NDArray[np.int64], NDArray[np.uint8]], None]


class _Buffers:
    """One reusable chunk buffer (chunk, S, S, 3) uint8 per thread: no fresh 10 MB array (and its
    page faults) per chunk. A buffer is used by one job at a time, inside its own thread."""

    def __init__(self, chunk: int, tile_size: int) -> None:
        self.shape = (chunk, tile_size, tile_size, 3)
        self._local = threading.local()

    def get(self) -> NDArray[np.uint8]:
        buf: NDArray[np.uint8] | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = np.empty(self.shape, dtype=np.uint8)
        return buf


def _chunk_job(read: ReadFn, coords: NDArray[np.int64], buffers: _Buffers, codec: str,
               quality: int, subsampling: str) -> bytes:
    buf = buffers.get()
    n = len(coords)
    buf[n:] = 255  # the last chunk is padded with white, as the writer pads it
    read(coords, buf[:n])
    return encode_tile_chunk(buf, codec, quality, subsampling)


def encoded_chunks(read: ReadFn, coords: NDArray[np.int64], chunk: int, tile_size: int, codec: str,
                   quality: int, subsampling: str, threads: int = 1) -> Iterator[tuple[bytes, int]]:
    """(encoded chunk, tiles in it) for consecutive chunks of ``coords`` (N, 2), in order.

    ``read(coords, out)`` must write every pixel of ``out`` (k, S, S, 3).
    """
    starts = range(0, len(coords), chunk)
    buffers = _Buffers(chunk, tile_size)
    if threads <= 1:
        for a in starts:
            part = coords[a:a + chunk]
            yield _chunk_job(read, part, buffers, codec, quality, subsampling), len(part)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsi-mil-tile") as pool:
        pending: deque[tuple[Future[bytes], int]] = deque()
        it = iter(starts)
        try:
            for a in it:
                part = coords[a:a + chunk]
                pending.append((pool.submit(_chunk_job, read, part, buffers, codec, quality, subsampling),
                                len(part)))
                if len(pending) >= 2 * threads:
                    fut, n = pending.popleft()
                    yield fut.result(), n
            while pending:
                fut, n = pending.popleft()
                yield fut.result(), n
        finally:
            for fut, _ in pending:
                fut.cancel()
