"""Threads inside one slide: read and encode the store's chunks in parallel, hand them over in order.

Each job reads one chunk of tiles (``chunk`` tiles, padded with white like the writer pads its
last chunk) through a thread-safe :class:`~wsi_mil.tiling.readers.TileReader` and encodes it with
the store's codec (:func:`wsi_mil.stores.codecs.encode_tile_chunk`, the writer's own encoder, so
the bytes are those the single-threaded writer would write). Decoding, resampling (Pillow) and
encoding (libjpeg-turbo) release the GIL, so ``threads`` jobs run on that many cores. At most
``2 * threads`` chunks are in flight: memory is bounded whatever the slide size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from wsi_mil.stores.codecs import encode_tile_chunk

ReadFn = Callable[[NDArray[np.int64], NDArray[np.uint8]], None]


def _chunk_job(read: ReadFn, coords: NDArray[np.int64], chunk: int, tile_size: int, codec: str,
               quality: int, subsampling: str) -> bytes:
    buf = np.full((chunk, tile_size, tile_size, 3), 255, dtype=np.uint8)
    read(coords, buf[:len(coords)])
    return encode_tile_chunk(buf, codec, quality, subsampling)


def encoded_chunks(read: ReadFn, coords: NDArray[np.int64], chunk: int, tile_size: int, codec: str,
                   quality: int, subsampling: str, threads: int = 1) -> Iterator[tuple[bytes, int]]:
    """(encoded chunk, tiles in it) for consecutive chunks of ``coords`` (N, 2), in order."""
    starts = range(0, len(coords), chunk)
    if threads <= 1:
        for a in starts:
            part = coords[a:a + chunk]
            yield _chunk_job(read, part, chunk, tile_size, codec, quality, subsampling), len(part)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsi-mil-tile") as pool:
        pending: deque[tuple[Future[bytes], int]] = deque()
        it = iter(starts)
        try:
            for a in it:
                part = coords[a:a + chunk]
                pending.append((pool.submit(_chunk_job, read, part, chunk, tile_size, codec, quality, subsampling),
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
