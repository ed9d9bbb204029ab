"""Compaction: merging small shards, and rewriting shards that hold mostly dropped crops.

Shards are immutable, so a crop that is gone stays in its shard, recorded as gone by its
absence from the live table. Compaction rewrites only when it pays: when at least
`min_small` small shards have piled up (each run that adds a few crops adds one), or when
most of a shard's rows are dead. Everything else is left alone, so publishing after a
compaction still sends only the shards it wrote.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flows.openimages.shards import encode, shard_rows, write_shard

TARGET_ROWS = 4096


def candidates(table: pd.DataFrame, folder: Path, target: int = TARGET_ROWS,
               min_small: int = 8, dead: float = 0.5) -> set[str]:
    """The crop shards worth rewriting: small ones once min_small have piled up, and those
    whose live rows are under `dead` of their rows. Feedback shards are left as they are."""
    live = table[~table.Shard.str.startswith("feedback-")].groupby("Shard").size()
    totals = {shard: shard_rows(folder / shard) for shard in live.index}
    small = {s for s in live.index if live[s] < target // 4}
    mostly_dead = {s for s in live.index if live[s] < totals[s] * dead}
    return mostly_dead | (small if len(small) >= min_small else set())


def compact(table: pd.DataFrame, folder: Path, target: int = TARGET_ROWS,
            min_small: int = 8, dead: float = 0.5) -> pd.DataFrame:
    """Merge the live rows of the candidate shards into new shards of up to `target` rows;
    return the table with their new Shard and Row (the old files are pruned later)."""
    chosen = candidates(table, folder, target, min_small, dead)
    moving = table[table.Shard.isin(chosen)].sort_values(["Shard", "Row"])
    if not chosen or (len(chosen) == 1 and len(moving) == shard_rows(folder / min(chosen))):
        return table  # one whole shard alone: rewriting it would change nothing
    parts = [pq.read_table(folder / shard).take(pa.array(group.Row.to_numpy()))
             for shard, group in moving.groupby("Shard", sort=True)]
    merged = pa.concat_tables(parts)
    names, rows = [], []
    for start in range(0, merged.num_rows, target):
        piece = merged.slice(start, target)
        name = write_shard(folder, encode(piece))
        names += [name] * piece.num_rows
        rows += list(range(piece.num_rows))
    table = table.copy()
    table.loc[moving.index, "Shard"] = names
    table.loc[moving.index, "Row"] = rows
    return table
