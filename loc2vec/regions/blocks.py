"""A region's spatial blocks (render partitions) follow from its size; region × block partition keys."""

from __future__ import annotations

from loc2vec.errors import CatalogError, ConfigError
from loc2vec.grid import MAX_BLOCKS_PER_SIDE, MosaicGrid, block_keys, check_blocks_per_side, parse_block_key
from loc2vec.regions.spec import check_name

# At most this many render units per block: 2 x 2 units of 1024 px, about 6 x 6 km at the default 3 m/px
# (50 Mpx, one partition run of a minute or two on a CPU core). Monaco (4 x 3 units) gets 2 x 2 blocks,
# Neubrandenburg (7 x 7 units) 4 x 4, a region of one unit a single block.
TARGET_UNITS_PER_BLOCK = 4
PARTITION_DELIMITER = "|"  # "<region>|<block>", e.g. "monaco|block-0-1"


def blocks_per_side_for(grid: MosaicGrid, target_units: int = TARGET_UNITS_PER_BLOCK) -> int:
    """The fewest blocks per side whose largest block holds at most ``target_units`` render units.

    Never more than the units along the region's shorter side (no block is empty: a long, narrow region's
    blocks may then hold more) nor than ``MAX_BLOCKS_PER_SIDE`` (a very large region's blocks hold more)."""
    if target_units < 1:
        raise ConfigError(f"target_units must be >= 1, got {target_units}")
    most = max(1, min(MAX_BLOCKS_PER_SIDE, *grid.n_units))
    blocks = next((b for b in range(1, most + 1) if grid.largest_block_units(b) <= target_units), most)
    return check_blocks_per_side(blocks, "blocks per side")


def partition_key(region: str, block: str) -> str:
    """The region × block partition key ``"<region>|<block>"`` (e.g. ``"monaco|block-0-1"``)."""
    check_name(region)
    parse_block_key(block, MAX_BLOCKS_PER_SIDE)
    return f"{region}{PARTITION_DELIMITER}{block}"


def region_partition_keys(region: str, blocks_per_side: int) -> list[str]:
    """Every region × block key of ``region`` split ``blocks_per_side`` × ``blocks_per_side``."""
    return [partition_key(region, block) for block in block_keys(blocks_per_side)]


def parse_partition_key(key: str) -> tuple[str, str]:
    """``(region, block)`` of a ``"<region>|<block>"`` key; CatalogError for any other form. (Whether the
    region exists and the block lies in its split: ``Catalog.parse_partition_key``.)"""
    region, sep, block = key.partition(PARTITION_DELIMITER)
    if not sep:
        raise CatalogError(f"bad partition key {key!r}: expected '<region>{PARTITION_DELIMITER}block-I-J'")
    check_name(region, f"partition key {key!r}")
    try:
        parse_block_key(block, MAX_BLOCKS_PER_SIDE)
    except ConfigError as exc:
        raise CatalogError(f"bad partition key {key!r}: {exc}") from None
    return region, block
