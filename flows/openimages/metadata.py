"""The metadata of one Open Images release on local disk: fetched, verified and cached."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.openimages import cache, csvread
from flows.openimages.fetch import Check, Progress, Stamp, ensure, new_session, quiet
from flows.openimages.ontology import Ontology, load_ontology, read_class_descriptions
from flows.openimages.releases import KINDS, SPLITS, MetadataFile, release_files

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://storage.googleapis.com/openimages"
SCHEMAS = {"boxes": (csvread.BOX_COLUMNS, csvread.BOX_TYPES),
           "images": (csvread.IMAGE_COLUMNS, csvread.IMAGE_TYPES)}


@dataclass
class Metadata:
    """Files of one release under a local folder; use .refresh() before reading."""

    base_url: str
    root: Path
    version: str = "v6"
    splits: tuple[str, ...] = SPLITS
    check_upstream: bool = True
    use_cache: bool = True
    progress: Progress = quiet
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    stamps: dict[tuple[str, str], Stamp] = field(default_factory=dict)

    @property
    def indexed(self) -> bool:
        """Whether images() reads only the rows asked for (the cache), not a whole CSV."""
        return self.use_cache

    @property
    def official(self) -> bool:
        return self.base_url.rstrip("/") == OFFICIAL_URL

    def refresh(self, kinds: tuple[str, ...] = KINDS) -> Metadata:
        """Fetch what is missing or changed upstream, then build stale caches."""
        # A local mirror (file://) needs no session, nor the import of requests.
        session = None if self.base_url.startswith("file:") else new_session()
        for item in release_files(self.version, self.splits):
            if item.kind in kinds:
                self._ensure(item, session)
        if self.use_cache:
            for (kind, split), path in self.files.items():
                target, stamp = self.cache_path(kind, split), self.stamps[(kind, split)]
                if kind in SCHEMAS and not cache.is_fresh(target, stamp):
                    log.info("building the %s cache of %s", kind, path.name)
                    try:
                        self._build(kind, split, path, stamp)
                    except csvread.MetadataError as error:
                        # A copy verified by an older release of this code, or damaged since.
                        raise csvread.MetadataError(
                            f"{error}; delete {path} to fetch it again") from error
        return self

    def _build(self, kind: str, split: str, csv: Path, stamp: Stamp) -> None:
        build = cache.build_box_cache if kind == "boxes" else cache.build_image_cache
        build(csv, stamp, self.cache_path(kind, split), self.progress)

    def _ensure(self, item: MetadataFile, session: requests.Session | None) -> None:
        # Published checksums describe the official files; a mirror carries files of its own.
        size, md5 = (item.size, item.md5) if self.official else (None, None)
        dest = self.root / item.path
        self.stamps[(item.kind, item.split)] = ensure(
            f"{self.base_url.rstrip('/')}/{item.path}", dest, size, md5,
            check_upstream=self.check_upstream, session=session,
            check=self._check(item, md5 is not None), progress=self.progress)
        self.files[(item.kind, item.split)] = dest

    def _check(self, item: MetadataFile, md5_known: bool) -> Check:
        """How a new copy of item is verified before it replaces the current one."""

        def check(part: Path, stamp: Stamp) -> None:
            if item.kind == "hierarchy":
                if not md5_known:
                    _check_hierarchy(part)
                return
            if not md5_known:
                csvread.ends_complete(part)
            if item.kind == "classes":
                if not read_class_descriptions(part):
                    raise csvread.MetadataError(f"{part}: no MID,DisplayName rows")
            elif self.use_cache:  # the cache build parses every row: no second pass needed
                self._build(item.kind, item.split, part, stamp)
            elif not md5_known:
                columns, types = SCHEMAS[item.kind]
                with self.progress(f"parsing {item.path.rpartition('/')[2]}",
                                   part.stat().st_size,
                                   done=f"parsed {item.path.rpartition('/')[2]}") as advance:
                    for _ in csvread.stream(part, columns, types, advance):
                        pass

        return check

    def cache_path(self, kind: str, split: str) -> Path:
        suffix = "parquet" if kind == "boxes" else "arrow"
        return self.root / "cache" / self.version / f"{kind}-{split}.{suffix}"

    def ontology(self) -> Ontology:
        """The class names and hierarchy of this release."""
        return load_ontology(self.files[("classes", "all")], self.files[("hierarchy", "all")])

    def boxes(self, mids: list[str]) -> dict[str, pa.Table]:
        """Boxes of the given labels per split, from the cache or streamed from the CSVs."""
        found = {}
        for split in self.splits:
            what = f"boxes of {len(mids)} label{'s' * (len(mids) != 1)} in {split}"
            if self.use_cache:
                with self.progress(f"selecting {what} from the cache", unit="boxes",
                                   done=f"selected {what} from the cache") as advance:
                    found[split] = cache.boxes_from_cache(self.cache_path("boxes", split), mids)
                    advance(found[split].num_rows)
            else:
                path = self.files[("boxes", split)]
                with self.progress(f"selecting {what} from {path.name}", path.stat().st_size,
                                   done=f"selected {what} from {path.name}") as advance:
                    found[split], skipped = csvread.read_boxes(path, mids, advance)
                if skipped:
                    log.warning("%s: skipped %d invalid boxes", split, skipped)
        return found

    def images(self, image_ids: pa.Array) -> pa.Table:
        """Image info of the given ImageIDs across the splits."""
        parts = []
        for split in self.splits:
            what = f"info of {len(image_ids)} images"
            if self.use_cache:
                with self.progress(f"looking up {what} in the {split} cache", unit="rows",
                                   done=f"looked up {what} in the {split} cache") as advance:
                    parts.append(cache.images_from_cache(self.cache_path("images", split),
                                                         image_ids))
                    advance(parts[-1].num_rows)
            else:
                path = self.files[("images", split)]
                with self.progress(f"looking up {what} in {path.name}", path.stat().st_size,
                                   done=f"looked up {what} in {path.name}") as advance:
                    parts.append(csvread.read_images(path, image_ids, advance))
        return pa.concat_tables(parts)

    def image_rows(self, keys: np.ndarray) -> pa.Table:
        """The image info of each given image key (sorted, one per box) from the cache, in
        their order, nulls where no split has the image (see cache.image_rows_from_cache)."""
        parts = []
        for split in self.splits:
            what = f"info of the images of {len(keys):,} boxes"
            with self.progress(f"looking up {what} in the {split} cache", unit="rows",
                               done=f"looked up {what} in the {split} cache") as advance:
                parts.append(cache.image_rows_from_cache(self.cache_path("images", split), keys))
                advance(len(keys) - parts[-1]["ImageID"].null_count)
        if len(parts) == 1:
            return parts[0]
        # An image belongs to one split: each row is filled by at most one of them.
        return pa.table([pc.coalesce(*(p[name] for p in parts)) for name in parts[0].column_names],
                        names=parts[0].column_names)

    def label_counts(self) -> dict[str, int]:
        """Boxes per label over the cached splits (empty when no cache was built)."""
        counts: dict[str, int] = {}
        for split in self.splits:
            info = cache.cache_info(self.cache_path("boxes", split)) or {}
            for label, n in info.get("label_counts", {}).items():
                counts[label] = counts.get(label, 0) + n
        return counts


def _check_hierarchy(path: Path) -> None:
    """Raise MetadataError unless path holds the class hierarchy's JSON tree."""
    try:
        tree = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise csvread.MetadataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(tree, dict) or "LabelName" not in tree:
        raise csvread.MetadataError(f"{path}: no LabelName at the root of the hierarchy")
