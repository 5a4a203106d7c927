"""gzip for the bodies exporters send, with a window sized to the body.

``gzip.compress`` sets zlib up for a 32 KiB window and about 256 KiB of state whatever the
input: for a 3 KiB Sentry envelope that set-up costs four times the compression itself
(110 µs against 25-38 µs, measured). A window no larger than the body loses nothing: deflate
cannot refer further back than the data goes.

Level 1: on a Sentry envelope of 100 log records (117 KB of JSON) it takes 214 µs where level 6
takes 711 µs, for 5.9 KB of output against 5.4 KB (measured). The sidecar's CPU is the pod's.
"""

from __future__ import annotations

import zlib

_GZIP_HEADER = 16  # added to wbits: a gzip header and trailer rather than zlib's


def gzip_compress(data: bytes, level: int = 1) -> bytes:
    window = min(zlib.MAX_WBITS, max(9, (len(data) - 1).bit_length()))
    compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_HEADER + window, window - 7)
    return compressor.compress(data) + compressor.flush()
