"""The out-of-core crop reader: byte-identical to the in-memory one, a cache that keeps to its budget."""

import json
import subprocess
import sys

import numpy as np
import pytest

from loc2vec.data.chunked import (
    EMPTY_CHUNK_BYTES,
    LOCALITY_TILE_CHUNKS,
    ChunkedCropReader,
    ReaderConfig,
    open_reader,
)
from loc2vec.data.crops import CropReader
from loc2vec.errors import ConfigError
from loc2vec.grid import MosaicGrid
from loc2vec.store.mosaic import create_or_open

CHUNK = 32
CHUNK_BYTES = 12 * CHUNK * CHUNK


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A seeded 12 x 250 x 333 mosaic in 32-px chunks (ragged at the right and bottom), with a block of
    all-zero chunks that are never written."""
    rng = np.random.default_rng(0)
    grid = MosaicGrid(32632, 1000.0, 5000.0, 2.0, 333, 250, chunk=CHUNK, unit_chunks=2)
    path = tmp_path_factory.mktemp("chunked") / "mosaic.zarr"
    store = create_or_open(path, grid, [f"c{i}" for i in range(12)], {})
    data = rng.integers(0, 256, (12, 250, 333), dtype=np.uint8)
    data[:, 64:128, 96:192] = 0
    store.mosaic[:] = data
    return path


def _centres(rng, n, width, height, margin):
    cols = rng.uniform(-margin, width + margin, n)
    rows = rng.uniform(-margin, height + margin, n)
    cols[:4] = [np.nan, np.inf, -1e9, 1e9]  # non-finite and far outside
    cols[4:8] = [16.0, 31.5, 32.0, 63.99]  # centres on and beside chunk boundaries
    rows[4:8] = [32.0, 31.99, 64.0, 95.5]
    return cols, rows


@pytest.mark.parametrize("size", [1, 7, 8, 33, 64, 100])
def test_chunked_crops_are_byte_identical_to_in_memory(store_path, size):
    memory = CropReader.from_store(store_path)
    chunked = ChunkedCropReader(store_path, 6 * CHUNK_BYTES)  # small: evicts all the time
    rng = np.random.default_rng(size)
    cols, rows = _centres(rng, 150, memory.width, memory.height, 80)
    for angles in (None, rng.uniform(0, 2 * np.pi, len(cols)), np.float32(0.3)):
        a, valid_a = memory.crops_px(cols, rows, size, angles)
        b, valid_b = chunked.crops_px(cols, rows, size, angles)
        assert a.shape == b.shape and np.array_equal(a, b)
        assert np.array_equal(valid_a, valid_b)
    assert chunked.cache.misses > len(chunked.cache)  # chunks were evicted and read again


def test_edge_raise_and_crs_helpers_match(store_path):
    memory = CropReader.from_store(store_path, edge="raise")
    chunked = open_reader(store_path, ReaderConfig("chunked", cache_mib=1), edge="raise")
    assert isinstance(chunked, ChunkedCropReader)
    for reader in (memory, chunked):
        with pytest.raises(ConfigError, match=r"crop at pixel \(10.0, 10.0\) size 64 leaves the mosaic"):
            reader.crops_px([10.0], [10.0], 64)
    x, y = memory.grid.pixel_to_xy(150.5, 120.25)
    assert np.array_equal(memory.crop(x, y, 40, 1.0), chunked.crop(x, y, 40, 1.0))
    assert chunked.channel_names == memory.channel_names


def test_real_mosaic_rotated_crops_across_chunks(monaco_mosaic):
    _, mosaic = monaco_mosaic
    memory = CropReader.from_store(mosaic.path)
    chunked = ChunkedCropReader(mosaic.path, 8 * 12 * 256 * 256)
    rng = np.random.default_rng(3)
    cols, rows = _centres(rng, 256, memory.width, memory.height, 100)
    cols[8:72] = rng.integers(1, memory.width // 256, 64) * 256 + rng.uniform(-2, 2, 64)  # on chunk edges
    angles = rng.uniform(0, 2 * np.pi, len(cols))
    for start in range(0, len(cols), 64):
        part = slice(start, start + 64)
        a, valid_a = memory.crops_px(cols[part], rows[part], 128, angles[part])
        b, valid_b = chunked.crops_px(cols[part], rows[part], 128, angles[part])
        assert np.array_equal(a, b) and np.array_equal(valid_a, valid_b)
        assert chunked.cache.current_bytes <= chunked.cache.max_bytes


def test_cache_accounting_never_exceeds_its_budget(store_path):
    budget = 5 * CHUNK_BYTES + 3 * EMPTY_CHUNK_BYTES
    reader = ChunkedCropReader(store_path, budget)
    rng = np.random.default_rng(1)
    for _ in range(40):
        cols, rows = rng.uniform(0, reader.width, 16), rng.uniform(0, reader.height, 16)
        reader.crops_px(cols, rows, 40, rng.uniform(0, 6.3, 16))
        held = list(reader.cache._lru.values())
        charged = sum(EMPTY_CHUNK_BYTES if c.strides[0] == 0 else c.nbytes for c in held)
        assert charged == reader.cache.current_bytes <= budget
        # what is held in memory: full chunks at most the budget, zero chunks share one 12-byte record
        assert sum(c.nbytes for c in held if c.strides[0] != 0) <= budget
    assert reader.cache.hits > 0 and reader.cache.misses > 0


def test_bad_reader_config_is_refused(store_path):
    with pytest.raises(ConfigError, match="smaller than one chunk"):
        ChunkedCropReader(store_path, CHUNK_BYTES - 1)
    for cache_mib in (0, -5.0, float("nan")):
        with pytest.raises(ConfigError, match="cache_mib must be a positive"):
            ReaderConfig("chunked", cache_mib=cache_mib)
    with pytest.raises(ConfigError, match="crop reader must be one of"):
        ReaderConfig("mmap")
    with pytest.raises(ConfigError, match="edge must be one of"):
        ChunkedCropReader(store_path, CHUNK_BYTES, edge="wrap")
    from loc2vec.training.config import TrainConfig

    with pytest.raises(ConfigError, match="cache_mib"):
        TrainConfig(cache_mib=-1)
    with pytest.raises(ConfigError, match="sampler must be one of"):
        TrainConfig(sampler="random")


def test_auto_reader_holds_small_mosaics_in_memory(store_path):
    raw_mib = 12 * 250 * 333 / 2**20
    assert isinstance(open_reader(store_path, ReaderConfig("auto", cache_mib=raw_mib * 2)), CropReader)
    assert isinstance(open_reader(store_path, ReaderConfig("auto", cache_mib=raw_mib / 4)), ChunkedCropReader)
    assert isinstance(open_reader(store_path, ReaderConfig("memory", cache_mib=0.01)), CropReader)


def test_locality_order_visits_points_tile_by_tile(store_path):
    reader = ChunkedCropReader(store_path, CHUNK_BYTES)
    rng = np.random.default_rng(2)
    cols, rows = rng.uniform(0, reader.width, 500), rng.uniform(0, reader.height, 500)
    order = reader.locality_order(cols, rows)
    assert sorted(order.tolist()) == list(range(500))
    chunks = np.stack([rows[order] // CHUNK, cols[order] // CHUNK], axis=1)
    changes = int((np.diff(chunks, axis=0) != 0).any(axis=1).sum())
    assert changes + 1 == len(np.unique(chunks, axis=0))  # each chunk's points come together
    tiles = (chunks // LOCALITY_TILE_CHUNKS) @ np.array([100, 1])
    assert (np.diff(tiles) >= 0).all() and len(np.unique(tiles)) == 2  # tile by tile (11 x 8 chunks: 2 tiles)


MEMORY_PROBE = """
import json, os, sys
import numpy as np
from loc2vec.data.chunked import ChunkedCropReader
from loc2vec.data.crops import CropReader

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

path, budget, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
before = peak = rss()
reader = ChunkedCropReader(path, budget) if kind == "chunked" else CropReader.from_store(path)
for _ in range(16):  # random rotated crops over the whole mosaic: every chunk is read, most of them often
    cols, rows = rng.uniform(0, reader.width, 64), rng.uniform(0, reader.height, 64)
    reader.crops_px(cols, rows, 48, rng.uniform(0, 6.3, 64))
    peak = max(peak, rss())
cache = getattr(reader, "cache", None)
print(json.dumps({"growth_mib": (peak - before) / 2**20, "misses": cache.misses if cache else 0}))
"""


def _mosaic(path, side: int):
    """A 12 x side x side mosaic in 256-px chunks, every chunk drawn (a line every 7 rows: compresses well)."""
    grid = MosaicGrid(32632, 0.0, 0.0, 3.0, side, side, chunk=256, unit_chunks=4)
    store = create_or_open(path, grid, [f"c{i}" for i in range(12)], {})
    block = np.zeros((12, 1024, 1024), np.uint8)
    block[:, ::7, :] = 200
    block[3, :, ::5] = 90
    for unit in grid.units():
        store.write_unit(unit, block)
    return path


def _probe(path, budget: int, kind: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), str(budget), kind], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_memory_does_not_grow_with_the_mosaic(tmp_path):
    """Random rotated crops over a 12 MiB and a 108 MiB mosaic through the same 4 MiB cache: the process's
    resident memory grows by about as much for both, while the in-memory reader's grows by the mosaic."""
    budget = 4 * 2**20
    small, large = _mosaic(tmp_path / "small.zarr", 1024), _mosaic(tmp_path / "large.zarr", 3072)
    grown = {name: _probe(path, budget, "chunked") for name, path in (("small", small), ("large", large))}
    memory = _probe(large, budget, "memory")
    raw_large_mib = 12 * 3072**2 / 2**20
    assert grown["large"]["misses"] > 144  # all 144 chunks read, and read again after eviction
    assert memory["growth_mib"] >= raw_large_mib  # the probe sees a mosaic held in memory
    assert grown["large"]["growth_mib"] < budget / 2**20 + 24 < raw_large_mib / 3
    assert grown["large"]["growth_mib"] - grown["small"]["growth_mib"] < 8  # 96 MiB more mosaic: no more memory


def test_previews_read_only_the_chunks_under_them(monaco_mosaic):
    from loc2vec.data.chunked import ChunkedCropReader
    from loc2vec.preview import busiest_crops

    _, mosaic = monaco_mosaic
    crops = busiest_crops(mosaic.path, n=4, size=128, seed=0)
    memory = CropReader.from_store(mosaic.path)  # the same draws from the in-memory reader
    rng = np.random.default_rng(0)
    cols = rng.uniform(128, memory.width - 128, 64)
    rows = rng.uniform(128, memory.height - 128, 64)
    every, _ = memory.crops_px(cols, rows, 128)
    busiest = np.argsort(-every.reshape(64, -1).mean(axis=1), kind="stable")[:4]
    assert np.array_equal(crops, every[busiest].transpose(0, 3, 1, 2)) and crops[0].any()
    reader = ChunkedCropReader(mosaic.path, 2**26)
    reader.crops_px(cols, rows, 128)
    assert reader.cache.misses < int(np.prod(reader.cache.array.cdata_shape))  # not the whole mosaic


def test_reader_pickles_for_spawned_workers(store_path):
    import pickle

    reader = ChunkedCropReader(store_path, 8 * CHUNK_BYTES)
    reader.crops_px([100.0], [100.0], 40)
    copy = pickle.loads(pickle.dumps(reader))
    assert len(copy.cache) == 0 and copy.cache.max_bytes == reader.cache.max_bytes
    a, _ = reader.crops_px([120.0, 300.0], [50.0, 240.0], 40, [0.3, 2.0])
    b, _ = copy.crops_px([120.0, 300.0], [50.0, 240.0], 40, [0.3, 2.0])
    assert np.array_equal(a, b)
