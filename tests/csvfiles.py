"""Writing small Open Images CSVs in the published layouts, for tests."""

from __future__ import annotations

from pathlib import Path

BOX_HEADER_V6 = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,"
                 "IsTruncated,IsGroupOf,IsDepiction,IsInside,XClick1X,XClick2X,XClick3X,"
                 "XClick4X,XClick1Y,XClick2Y,XClick3Y,XClick4Y")
BOX_HEADER_V5 = ",".join(BOX_HEADER_V6.split(",")[:13])
IMAGE_HEADER = ("ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,"
                "Title,OriginalSize,OriginalMD5,Thumbnail300KURL,Rotation")


def box_row(image: str, label: str, box=(0.1, 0.5, 0.2, 0.6), flags=(0, 0, 0, 0, 0),
            source: str = "xclick", wide: bool = True) -> str:
    """One box line; wide rows carry the eight click coordinates of the v6 train file."""
    flags_text = ",".join(str(f) for f in flags)
    row = f"{image},{source},{label},1,{box[0]},{box[1]},{box[2]},{box[3]},{flags_text}"
    return row + (",-1" * 8 if wide else "")


def write_boxes(path: Path, rows: list[str], wide: bool = True) -> Path:
    path.write_text("\n".join([BOX_HEADER_V6 if wide else BOX_HEADER_V5, *rows]) + "\n")
    return path


def write_images(path: Path, ids: list[str], subset: str = "train") -> Path:
    lines = [IMAGE_HEADER] + [
        f"{i},{subset},https://x.invalid/{i}.jpg,https://x.invalid/p/{i},"
        f"https://creativecommons.org/licenses/by/2.0/,https://x.invalid/u/{n},Author {n},"
        f"title {n},{1000 + n},bWQ1,https://x.invalid/t/{i}.jpg,{90.0 if n % 5 == 0 else 0.0}"
        for n, i in enumerate(ids)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
