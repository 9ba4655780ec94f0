"""`pipeline.storage`: one product written and read the same way in both backends; nothing unfinished published;
`ShardReader` against zarr-python on the frame layout (N-D rows), its index checksum checked."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from pipeline.storage import (
    ZSTD_BITSHUFFLE,
    ZSTD_SHUFFLE,
    Codec,
    Product,
    ProductWriter,
    ShardReader,
    StoreError,
    backend_for,
)

_COL = Codec(ZSTD_SHUFFLE, {"compression": "lzf", "shuffle": True})
_ROWS = Codec(ZSTD_BITSHUFFLE, {"compression": "lzf"})


def _write(path: Path, col: np.ndarray, rows: np.ndarray, small: np.ndarray) -> None:
    with ProductWriter(path, backend_for(path), threads=2) as w:
        g = w.group("g")
        c = w.column(g, "col", col.dtype, _COL, chunk_rows=16, shard_rows=64)
        for piece in np.array_split(col, 5):
            c.write(piece)
        c.close()
        r = w.column(w.root, "rows", rows.dtype, _ROWS, chunk_rows=1, shard_rows=4, shape=rows.shape)
        r.write(rows[:3])
        r.write(rows[3:])
        r.close()
        w.array(g, "small", small, Codec())
        w.set_attrs(g, {"n": len(col), "nested": {"a": [1, 2]}})
        w.finish({"format": "test-product", "format_version": 7, "note": "é"})


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_product_reads_back_the_same_in_both_backends(tmp_path, suffix):
    rng = np.random.default_rng(0)
    col = rng.integers(0, 1000, 200).astype("<i8")
    rows = rng.poisson(0.5, (9, 2, 3, 4)).astype("u1")
    rows[4] = 0
    small = np.arange(5, dtype="<i2")
    path = tmp_path / f"p{suffix}"
    _write(path, col, rows, small)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    product = Product(path, "test-product", 7)
    assert product.fmt == ("zarr" if suffix == ".zarr" else "h5")
    assert product.attrs["complete"] is True and product.attrs["note"] == "é"
    assert (product.files is not None) == (suffix == ".zarr")
    with product.root() as root:
        np.testing.assert_array_equal(root["g/col"][:], col)
        np.testing.assert_array_equal(root["rows"][:], rows)
        np.testing.assert_array_equal(root["g/small"][:], small)
        assert product.backend.read_attrs(root["g"]) == {"n": 200, "nested": {"a": [1, 2]}}
    if suffix == ".h5":  # plain h5py reads it: attribute values are JSON strings
        with h5py.File(path, "r") as f:
            assert f.attrs["format_version"] == "7" and f["rows"].compression == "lzf"
        assert product.shard_reader("rows") is None
    else:  # plain zarr reads it; the fast reader agrees
        assert zarr.open_group(path, mode="r").attrs["format_version"] == 7
        reader = product.shard_reader("rows", what="cache")
        for i in range(len(rows)):
            np.testing.assert_array_equal(reader.read(i), rows[i])
        with ThreadPoolExecutor(2) as pool:
            np.testing.assert_array_equal(product.shard_reader("g/col").start(10, 150, pool).result(), col[10:150])


def test_an_unfinished_or_failed_product_is_not_published(tmp_path):
    path = tmp_path / "p.zarr"
    with pytest.raises(StoreError, match=r"finish\(\) was not called; nothing was written"):
        with ProductWriter(path, backend_for(path)) as w:
            w.array(w.root, "a", np.arange(3), Codec())
    with pytest.raises(RuntimeError, match="boom"):
        with ProductWriter(path, backend_for(path)) as w:
            w.column(w.root, "c", "<u2", _COL, chunk_rows=4, shard_rows=8).write(np.arange(100, dtype="<u2"))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_opening_refuses_another_format_version_or_an_incomplete_product(tmp_path):
    path = tmp_path / "p.zarr"
    _write(path, np.arange(20, dtype="<i8"), np.zeros((2, 1, 1, 1), "u1"), np.arange(2, dtype="<i2"))
    with pytest.raises(StoreError, match="is not a other-product"):
        Product(path, "other-product", 7)
    with pytest.raises(StoreError, match="has format version 7, this code reads version 8"):
        Product(path, "test-product", 8)
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="is incomplete"):
        Product(path, "test-product", 7)
    with pytest.raises(StoreError, match="does not exist"):
        Product(tmp_path / "none.zarr", "test-product", 7)


def _frames_by_zarr(tmp_path: Path, data: np.ndarray, shard: int) -> Path:
    """The frame caches' layout written by zarr-python itself (not by our ShardWriter)."""
    arr = zarr.open_group(tmp_path / "f.zarr", mode="w-").create_array(
        "frames", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]), shards=(shard, *data.shape[1:]),
        compressors=BloscCodec(**ZSTD_BITSHUFFLE))
    arr[...] = data
    return tmp_path / "f.zarr" / "frames"


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_shard_reader_reads_frame_rows_as_zarr_does(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = rng.poisson(0.4, (11, 3, 2, 5, 6)).astype(dtype)
    data[2] = 0  # an all-zero chunk: not stored
    data[4:8] = 0  # a whole shard of zeros: no shard file
    path = _frames_by_zarr(tmp_path, data, 4)
    assert not (path / "c/1/0/0/0/0").exists()
    reader = ShardReader.open(path)
    assert reader is not None and (reader.n, reader.chunk, reader.shard, reader.row_shape) == (11, 1, 4, (3, 2, 5, 6))
    for i in range(-len(data), len(data)):
        got = reader.read(i)
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, data[i]), i
    with pytest.raises(IndexError):
        reader.read(11)
    with ThreadPoolExecutor(2) as pool:
        np.testing.assert_array_equal(reader.start(1, 10, pool).result(), data[1:10])


def test_shard_reader_refuses_a_damaged_frame_index(tmp_path):
    """The frame caches' reader checks each shard index's crc32c too (the frames' own reader did not)."""
    data = np.arange(4 * 2 * 3 * 3, dtype="u1").reshape(4, 2, 1, 3, 3) + 1
    path = _frames_by_zarr(tmp_path, data, 4)
    shard = path / "c/0/0/0/0/0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum"):
        ShardReader.open(path, what="cache").read(0)
    shard.write_bytes(bytes(raw[-20:]))  # shorter than the index
    with pytest.raises(StoreError, match="too short for its index"):
        ShardReader.open(path, what="cache").read(0)
