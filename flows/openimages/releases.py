"""The published Open Images releases: which metadata files each has, with sizes and MD5s."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "validation", "test")
KINDS = ("boxes", "images", "classes", "hierarchy")


@dataclass(frozen=True)
class MetadataFile:
    """One published metadata file, relative to the metadata base URL."""

    kind: str
    split: str  # train, validation, test, or "all" for classes and hierarchy
    path: str
    size: int | None = None  # published byte size, where known
    md5: str | None = None  # published hex MD5, where known


def _f(kind: str, split: str, path: str, size: int | None = None,
       md5: str | None = None) -> MetadataFile:
    return MetadataFile(kind, split, path, size, md5)


# Image info with rotation is shared by every release since 2018_04.
_IMAGES = (
    _f("images", "train", "2018_04/train/train-images-boxable-with-rotation.csv", 638407721,
       "a4ac0bcedb5c2df4d1b1230dc6b41b8f"),
    _f("images", "validation", "2018_04/validation/validation-images-with-rotation.csv",
       15245485, "643a54e43b0bab8acce8817b4a569780"),
    _f("images", "test", "2018_04/test/test-images-with-rotation.csv", 45227339,
       "d832feb775b3cb78077bf8ae350adce5"),
)
_HIERARCHY = _f("hierarchy", "all", "2018_04/bbox_labels_600_hierarchy.json")
_V5_CLASSES = _f("classes", "all", "v5/class-descriptions-boxable.csv", 12011,
                 "9846fd22fd2e68b45e3f3810a4c2a32a")
_V5_HELDOUT = (
    _f("boxes", "validation", "v5/validation-annotations-bbox.csv", 25105048,
       "c5e8200df129ea6867e913e8b21fcab9"),
    _f("boxes", "test", "v5/test-annotations-bbox.csv", 77484237,
       "1cc058a7003b4e73d47642276e9b123b"),
)
_V4_TRAIN = _f("boxes", "train", "2018_04/train/train-annotations-bbox.csv", 1194033454,
               "dc89115275ad6d0c771bd6590aa71ac3")
_V6_TRAIN = _f("boxes", "train", "v6/oidv6-train-annotations-bbox.csv", 2258447590,
               "3c3e70cfaba5757ea5c2604b19cac3b2")

RELEASES: dict[str, tuple[MetadataFile, ...]] = {
    "v4": (
        _f("classes", "all", "2018_04/class-descriptions-boxable.csv"),
        _HIERARCHY, _V4_TRAIN,
        _f("boxes", "validation", "2018_04/validation/validation-annotations-bbox.csv"),
        _f("boxes", "test", "2018_04/test/test-annotations-bbox.csv"),
        *_IMAGES,
    ),
    # v5 re-verified the held-out boxes; its train boxes are v4's.
    "v5": (_V5_CLASSES, _HIERARCHY, _V4_TRAIN, *_V5_HELDOUT, *_IMAGES),
    # v6 added train boxes (21 columns, with the click points); v7 added no boxes.
    "v6": (_V5_CLASSES, _HIERARCHY, _V6_TRAIN, *_V5_HELDOUT, *_IMAGES),
    "v7": (_f("classes", "all", "v7/oidv7-class-descriptions-boxable.csv"), _HIERARCHY,
           _V6_TRAIN, *_V5_HELDOUT, *_IMAGES),
}
ALIASES = {"2018_04": "v4"}


def release_files(version: str, splits: tuple[str, ...] = SPLITS) -> tuple[MetadataFile, ...]:
    """The files of one release for the given splits (classes and hierarchy always)."""
    key = ALIASES.get(version, version)
    if key not in RELEASES:
        known = ", ".join([*RELEASES, *ALIASES])
        raise ValueError(f"unknown Open Images version {version!r}; known: {known}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known: {', '.join(SPLITS)}")
    return tuple(f for f in RELEASES[key] if f.split == "all" or f.split in splits)
