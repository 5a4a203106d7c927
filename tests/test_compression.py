"""The exporters' gzip: any body, any size, read back whole by a standard gzip reader."""

from __future__ import annotations

import gzip
import os

import pytest

from exporters.compression import gzip_compress


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 4096, 32767, 32768, 32769, 1 << 20])
def test_bodies_of_every_size_round_trip(size: int) -> None:
    text = (b'{"span_id":"5b8efff798038103","op":"db"}' * (size // 40 + 1))[:size]
    noise = os.urandom(size)
    for body in (text, noise):
        assert gzip.decompress(gzip_compress(body)) == body


def test_repetitive_bodies_shrink() -> None:
    body = b'{"op":"db","description":"SELECT lessons.id FROM lessons"}' * 50
    assert len(gzip_compress(body)) < len(body) // 10
