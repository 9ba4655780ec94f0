"""`pipeline.storage.ShardWriter` writes the files zarr-python writes, byte for byte (the Zarr v3 sharding spec);
`pipeline.storage.ShardReader` reads them back as zarr-python does, checking each shard index's crc32c."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from pipeline.storage import ShardReader, ShardWriter
from pipeline.store import COLUMN_CODECS


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pair(tmp_path: Path, data: np.ndarray, chunks: tuple, shards: tuple, codec: BloscCodec, pieces: list[int]):
    """The same array written by zarr-python (``arr[:] = data``) and by ShardWriter fed ``pieces`` rows at a time."""
    ref = zarr.open_group(tmp_path / "ref.zarr", mode="w-").create_array(
        "a", shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards, compressors=codec)
    ref[...] = data
    ours = zarr.open_group(tmp_path / "ours.zarr", mode="w-").create_array(
        "a", shape=(0, *data.shape[1:]), dtype=data.dtype, chunks=chunks, shards=shards, compressors=codec)
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as io:
        w = ShardWriter(ours, pool, io, max_pending=3)
        i = 0
        for k in pieces:
            w.write(data[i : i + k])
            i += k
        w.write(data[i:])
        assert w.close() == len(data)
    ours.resize(data.shape)
    return tmp_path / "ref.zarr" / "a", tmp_path / "ours.zarr" / "a"


@pytest.mark.parametrize("dtype, column", [("<u2", "x"), ("<i8", "t"), ("u1", "p")])
def test_event_columns_byte_identical_to_zarr(tmp_path, dtype, column):
    rng = np.random.default_rng(1)
    n = 64 * 10 + 37  # a partial last chunk and a partial last shard
    data = rng.integers(0, 200, n).astype(dtype)
    data[64 * 2 : 64 * 3] = 0  # an all-zero chunk: not stored, index entry 2**64-1
    data[256 : 256 + 256] = 0  # a whole shard of zeros: no shard file at all
    ref, ours = _pair(tmp_path, data, (64,), (256,), BloscCodec(**COLUMN_CODECS[column]), [1, 63, 100, 0, 300])
    fr, fo = _files(ref), _files(ours)
    assert json.loads(fr.pop("zarr.json")) == json.loads(fo.pop("zarr.json"))
    assert "c/1" not in fr and fr.keys() == fo.keys() and fr == fo
    np.testing.assert_array_equal(zarr.open_array(ours, mode="r")[:], data)


def test_frame_layout_byte_identical_to_zarr(tmp_path):
    """The frame caches' layout: (N, T, P, H, W), one sample per chunk, shards of 4, bitshuffle."""
    rng = np.random.default_rng(2)
    data = rng.poisson(0.3, (11, 3, 2, 8, 8)).astype("u1")
    data[5] = 0
    codec = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    ref, ours = _pair(tmp_path, data, (1, 3, 2, 8, 8), (4, 3, 2, 8, 8), codec, [3, 2, 5])
    fr, fo = _files(ref), _files(ours)
    assert json.loads(fr.pop("zarr.json")) == json.loads(fo.pop("zarr.json"))
    assert fr == fo


def test_refuses_other_layouts(tmp_path):
    g = zarr.open_group(tmp_path / "x.zarr", mode="w-")
    plain = g.create_array("plain", shape=(0,), dtype="u1", chunks=(8,))
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="not the sharded Blosc layout"):
        ShardWriter(plain, pool, pool)


def test_column_reader_matches_zarr_for_any_forward_ranges(tmp_path):
    """`ShardReader` against zarr-python on a column with a padded last chunk and a missing shard."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 2**40, 64 * 10 + 37).astype("<i8")
    data[256:512] = 0  # shard 1 not written at all
    arr = zarr.open_group(tmp_path / "g.zarr", mode="w-").create_array(
        "t", shape=data.shape, dtype=data.dtype, chunks=(64,), shards=(256,), compressors=BloscCodec(**COLUMN_CODECS["t"]))
    arr[...] = data
    reader = ShardReader.open(tmp_path / "g.zarr" / "t")
    assert reader is not None and reader.n == len(data)
    cuts = [0, 0, 1, 63, 64, 200, 300, 513, 640, 641, len(data)]  # empty, inside a chunk, across shards, to the end
    with ThreadPoolExecutor(2) as pool:
        for a, b in zip(cuts[:-1], cuts[1:]):
            np.testing.assert_array_equal(reader.start(a, b, pool).result(), data[a:b], err_msg=f"{a}:{b}")
        fresh = ShardReader.open(tmp_path / "g.zarr" / "t")
        np.testing.assert_array_equal(fresh.start(100, 650, pool).result(), data[100:650])
    other = zarr.open_group(tmp_path / "g.zarr").create_array("plain", shape=(10,), dtype="u1", chunks=(5,))
    assert ShardReader.open(tmp_path / "g.zarr" / "plain") is None  # unsharded: zarr-python reads it
    del other


def test_column_reader_refuses_a_damaged_index(tmp_path):
    from pipeline.storage import StoreError

    data = np.arange(300, dtype="<u2")
    arr = zarr.open_group(tmp_path / "g.zarr", mode="w-").create_array(
        "x", shape=data.shape, dtype=data.dtype, chunks=(64,), shards=(256,), compressors=BloscCodec(**COLUMN_CODECS["x"]))
    arr[...] = data
    shard = tmp_path / "g.zarr" / "x" / "c" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(raw))
    with ThreadPoolExecutor(1) as pool, pytest.raises(StoreError, match="checksum"):
        ShardReader.open(tmp_path / "g.zarr" / "x").start(0, 10, pool).result()
