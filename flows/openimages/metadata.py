"""The metadata of one Open Images release on local disk: fetched, verified and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import requests

from flows.openimages import cache, csvread
from flows.openimages.fetch import Stamp, ensure
from flows.openimages.ontology import Ontology, load_ontology
from flows.openimages.releases import KINDS, SPLITS, MetadataFile, release_files

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://storage.googleapis.com/openimages"


@dataclass
class Metadata:
    """Files of one release under a local folder; use .refresh() before reading."""

    base_url: str
    root: Path
    version: str = "v6"
    splits: tuple[str, ...] = SPLITS
    check_upstream: bool = True
    use_cache: bool = True
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    stamps: dict[tuple[str, str], Stamp] = field(default_factory=dict)

    @property
    def official(self) -> bool:
        return self.base_url.rstrip("/") == OFFICIAL_URL

    def refresh(self, kinds: tuple[str, ...] = KINDS) -> Metadata:
        """Fetch what is missing or changed upstream, then build stale caches."""
        session = requests.Session()
        for item in release_files(self.version, self.splits):
            if item.kind in kinds:
                self._ensure(item, session)
        if self.use_cache:
            for (kind, split), path in self.files.items():
                target = self.cache_path(kind, split)
                if kind in {"boxes", "images"} and not cache.is_fresh(target, self.stamps[
                        (kind, split)]):
                    log.info("building the %s cache of %s", kind, path.name)
                    build = cache.build_box_cache if kind == "boxes" else cache.build_image_cache
                    build(path, self.stamps[(kind, split)], target)
        return self

    def _ensure(self, item: MetadataFile, session: requests.Session) -> None:
        # Published checksums describe the official files; a mirror carries files of its own.
        size, md5 = (item.size, item.md5) if self.official else (None, None)
        dest = self.root / item.path
        self.stamps[(item.kind, item.split)] = ensure(
            f"{self.base_url.rstrip('/')}/{item.path}", dest, size, md5,
            check_upstream=self.check_upstream, session=session)
        self.files[(item.kind, item.split)] = dest

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
            if self.use_cache:
                found[split] = cache.boxes_from_cache(self.cache_path("boxes", split), mids)
            else:
                found[split], skipped = csvread.read_boxes(self.files[("boxes", split)], mids)
                if skipped:
                    log.warning("%s: skipped %d invalid boxes", split, skipped)
        return found

    def images(self, image_ids: pa.Array) -> pa.Table:
        """Image info of the given ImageIDs across the splits."""
        parts = [
            cache.images_from_cache(self.cache_path("images", s), image_ids) if self.use_cache
            else csvread.read_images(self.files[("images", s)], image_ids)
            for s in self.splits
        ]
        return pa.concat_tables(parts)

    def label_counts(self) -> dict[str, int]:
        """Boxes per label over the cached splits (empty when no cache was built)."""
        counts: dict[str, int] = {}
        for split in self.splits:
            info = cache.cache_info(self.cache_path("boxes", split)) or {}
            for label, n in info.get("label_counts", {}).items():
                counts[label] = counts.get(label, 0) + n
        return counts
