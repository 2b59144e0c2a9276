"""Parallel gzip sizes (sparsekit.onnx.compress) are a real gzip stream whatever the threads; fast entropy counts."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsekit.onnx import compress


def _stream(data: bytes, level: int, block: int, threads: int) -> bytes:
    """The gzip stream whose size gzip_size_of_bytes reports: header, the blocks' deflate pieces, trailer."""
    view = memoryview(data)
    body = b"".join(compress.deflate_blocks((view[i : i + block] for i in range(0, len(data), block)), level, threads))
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + body + zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")


@settings(max_examples=60, deadline=None)
@given(
    # Random bytes (stored blocks) or repeats (long matches reaching across the cuts).
    data=st.binary(max_size=5000) | st.builds(lambda n, b: b * n, st.integers(1, 300), st.binary(min_size=1)),
    block=st.integers(1, 1500),
    threads=st.integers(1, 4),
    level=st.sampled_from([0, 1, 6, 9]),
    feed=st.integers(1, 2000),
)
def test_blocks_join_into_one_gzip_stream_of_the_reported_size(data, block, threads, level, feed):
    stream = _stream(data, level, block, threads)
    assert gzip.decompress(stream) == data
    # The cuts depend on the data alone: any number of threads gives the same bytes.
    assert stream == _stream(data, level, block, 1)
    old = compress.BLOCK_BYTES, compress._FEED_BYTES
    # (not monkeypatch: hypothesis reruns the body within one test). Sizes feed zlib in slices smaller
    # than a block: the size reported is still this stream's.
    compress.BLOCK_BYTES, compress._FEED_BYTES = block, feed
    try:
        assert compress.gzip_size_of_bytes(data, level) == len(stream)
    finally:
        compress.BLOCK_BYTES, compress._FEED_BYTES = old


def test_up_to_one_block_it_is_exactly_gzip(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(50_000).astype(np.float32) * (rng.random(50_000) < 0.2)).tobytes()
    for level in (1, 6, 9):  # (level 0 stores: its block cuts follow zlib's buffers, not gzip's)
        want = len(gzip.compress(data, compresslevel=level, mtime=0))
        assert compress.gzip_size_of_bytes(data, level) == want
        f = tmp_path / "w.bin"
        f.write_bytes(data)
        assert compress.gzip_size_of_files([f], level) == want
    assert compress.gzip_size_of_bytes(b"", 6) == len(gzip.compress(b"", compresslevel=6, mtime=0))


def test_files_are_cut_into_fixed_blocks_across_file_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(compress, "BLOCK_BYTES", 1000)
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 4, n, dtype=np.uint8).tobytes() for n in (2500, 0, 999, 1)]
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(p)
    data = b"".join(parts)
    blocks = list(compress._file_blocks(paths, compress.BLOCK_BYTES))
    assert [len(b) for b in blocks] == [1000, 1000, 1000, 500] and b"".join(blocks) == data
    # The files' size is the size of the stream the fixed blocks make, and that stream is gzip.
    stream = _stream(data, 6, 1000, 2)
    assert gzip.decompress(stream) == data
    assert compress.gzip_size_of_files(paths, 6) == len(stream) == compress.gzip_size_of_bytes(data, 6)
    # A few bytes of sync flush per cut: within 1% of one-piece gzip even on 1000-byte blocks.
    assert abs(len(stream) - len(gzip.compress(data, compresslevel=6, mtime=0))) < 0.01 * len(stream) + 64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=300), st.integers(1, 8))
def test_entropy_run_counts_equal_numpy_unique_across_slices(values, chunk):
    import math

    from sparsekit.onnx import stats

    a = np.sort(np.array(values, dtype=np.uint32))
    counts = np.unique(a, return_counts=True)[1]
    old = stats._RUN_CHUNK
    stats._RUN_CHUNK = chunk  # tiny slices: runs that cross one or several slice ends
    try:
        runs, spread = stats._run_stats(a)
    finally:
        stats._RUN_CHUNK = old
    assert runs == counts.size
    assert math.isclose(spread, float(sum(c * math.log2(c) for c in counts.tolist())), abs_tol=1e-9)
    q = counts / counts.sum()
    assert math.isclose(stats._entropy_from(spread, a.size), float(-(q * np.log2(q)).sum()), abs_tol=1e-9)
