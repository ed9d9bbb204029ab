"""Generate the deterministic, SYNTHETIC offline Open Images mirror used by tests and demos."""

import argparse
import base64
import csv
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SEED = 20240601
HAMBURGER, SANDWICH, SUBMARINE = "/m/0cdn1", "/m/0l515", "/m/06pcq"
CAR, PERSON = "/m/0k4j", "/m/01g317"
MAIN_CLASSES = (HAMBURGER, SANDWICH, CAR)
SUBSETS = (("train", 120), ("validation", 30), ("test", 30))
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside", "XClick1X",
              "XClick2X", "XClick3X", "XClick4X", "XClick1Y", "XClick2Y", "XClick3Y", "XClick4Y"]
INFO_HEADER = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License",
               "AuthorProfileURL", "Author", "Title", "OriginalSize", "OriginalMD5",
               "Thumbnail300KURL", "Rotation"]
BASE_URL = "https://openimager-sample.invalid"
LICENSE = "https://creativecommons.org/licenses/by/2.0/"
# (min width px, max width px, min aspect w/h, max aspect w/h) of one instance of each class.
SHAPES = {HAMBURGER: (60, 110, 1.1, 1.4), SANDWICH: (60, 110, 1.0, 1.3),
          SUBMARINE: (120, 180, 2.6, 3.4), CAR: (80, 150, 1.6, 2.1), PERSON: (32, 60, 0.38, 0.5)}

Rng = np.random.Generator
Box = tuple[int, int, int, int]
Color = tuple[int, int, int]


def shade(rng: Rng, palette: list[Color], spread: int = 18) -> Color:
    """Return a random palette colour with a per-instance brightness and hue shift."""
    base = np.array(palette[int(rng.integers(len(palette)))])
    delta = rng.integers(-spread, spread + 1, 3) + int(rng.integers(-spread, spread + 1))
    r, g, b = (int(v) for v in np.clip(base + delta, 0, 255))
    return r, g, b


def draw_hamburger(d: ImageDraw.ImageDraw, b: Box, rng: Rng) -> None:
    """Draw stacked bun, lettuce, tomato, patty and bun layers filling the box."""
    (x0, y0, x1, y1), w, h = b, b[2] - b[0], b[3] - b[1]
    bun = shade(rng, [(205, 150, 75), (170, 105, 50), (225, 185, 120)])
    ys = [y0 + int(f * h) for f in (0.43, 0.55, 0.63, 0.8, 0.9)]
    d.chord([x0, y0, x1, ys[4]], 180, 360, fill=bun)
    for _ in range(5):  # sesame seeds make the dome distinct from plain clutter ellipses
        sx, sy = x0 + int(rng.uniform(0.25, 0.75) * w), y0 + int(rng.uniform(0.1, 0.35) * h)
        d.ellipse([sx - 2, sy - 1, sx + 2, sy + 1], fill=(245, 235, 200))
    d.rounded_rectangle([x0, ys[0], x1, ys[1]], radius=3,
                        fill=shade(rng, [(70, 170, 50), (240, 200, 50)]))
    d.rectangle([x0 + w // 20, ys[1], x1 - w // 20, ys[2]], fill=shade(rng, [(215, 40, 35)]))
    d.rounded_rectangle([x0 + w // 30, ys[2], x1 - w // 30, ys[3]], radius=4,
                        fill=shade(rng, [(95, 55, 30), (60, 35, 25)]))
    d.rounded_rectangle([x0 + w // 15, ys[3], x1 - w // 15, y1], radius=5, fill=bun)


def draw_sandwich(d: ImageDraw.ImageDraw, b: Box, rng: Rng) -> None:
    """Draw a triangular (or square) slice with a bread crust and a coloured filling stripe."""
    (x0, y0, x1, y1), w, h = b, b[2] - b[0], b[3] - b[1]
    # white, wholegrain and toasted breads keep the mean colour from giving the class away
    crust = shade(rng, [(200, 160, 100), (140, 90, 50), (225, 190, 130)])
    bread = shade(rng, [(245, 232, 200), (185, 140, 95), (215, 175, 110)], 12)
    filling = shade(rng, [(90, 190, 70), (235, 140, 150), (245, 205, 60), (150, 70, 50)])
    t = max(3, min(w, h) // 9)
    if rng.random() < 0.7:
        xm = (x0 + x1) // 2
        d.polygon([(x0, y1), (x1, y1), (xm, y0)], fill=crust)
        d.polygon([(x0 + 2 * t, y1 - t), (x1 - 2 * t, y1 - t), (xm, y0 + 2 * t)], fill=bread)
        # the stripe follows the slanted sides so it stays inside the slice
        ya, yb = y0 + int(0.55 * h), y0 + int(0.7 * h)
        ha, hb = ((yy - y0) * w / (2 * h) - 1.5 * t for yy in (ya, yb))
        d.polygon([(xm - ha, ya), (xm + ha, ya), (xm + hb, yb), (xm - hb, yb)], fill=filling)
    else:
        d.rounded_rectangle(list(b), radius=t * 2, fill=crust)
        d.rectangle([x0 + t, y0 + t, x1 - t, y1 - t], fill=bread)
        d.rectangle([x0 + t, y0 + int(0.45 * h), x1 - t, y0 + int(0.6 * h)], fill=filling)


def draw_submarine(d: ImageDraw.ImageDraw, b: Box, rng: Rng) -> None:
    """Draw a long rounded bun with a lettuce stripe and tomato dots."""
    (x0, y0, x1, _), w, h = b, b[2] - b[0], b[3] - b[1]
    d.rounded_rectangle(list(b), radius=h // 2, fill=shade(rng, [(215, 160, 90)]))
    ya, yb = y0 + int(0.42 * h), y0 + int(0.62 * h)
    d.rectangle([x0 + w // 12, ya, x1 - w // 12, yb], fill=shade(rng, [(80, 180, 60)]))
    for i in range(5):
        cx, r = x0 + int((i + 1.0) * w / 6), max(2, h // 10)
        d.ellipse([cx - r, ya - r // 2, cx + r, ya + r + r // 2], fill=(210, 45, 40))


def draw_car(d: ImageDraw.ImageDraw, b: Box, rng: Rng) -> None:
    """Draw a body, a windowed cabin and two dark wheels."""
    (x0, y0, x1, y1), w, h = b, b[2] - b[0], b[3] - b[1]
    body = shade(rng, [(200, 30, 30), (30, 70, 190), (230, 230, 235), (40, 40, 45),
                      (210, 170, 40), (200, 150, 90), (120, 70, 40), (60, 140, 60)])
    cabin = [(0.22, 0.42), (0.3, 0.04), (0.72, 0.04), (0.82, 0.42)]
    window = [(0.3, 0.4), (0.35, 0.12), (0.67, 0.12), (0.74, 0.4)]
    d.polygon([(x0 + fx * w, y0 + fy * h) for fx, fy in cabin], fill=body)
    d.polygon([(x0 + fx * w, y0 + fy * h) for fx, fy in window], fill=(165, 200, 230))
    d.rounded_rectangle([x0, y0 + int(0.38 * h), x1, y0 + int(0.8 * h)], radius=max(2, h // 8),
                        fill=body)
    r = int(0.19 * h)
    for cx in (x0 + int(0.24 * w), x0 + int(0.76 * w)):
        d.ellipse([cx - r, y1 - 2 * r, cx + r, y1], fill=(25, 25, 25))
        d.ellipse([cx - r // 2, y1 - r - r // 2, cx + r // 2, y1 - r // 2], fill=(150, 150, 150))


def draw_person(d: ImageDraw.ImageDraw, b: Box, rng: Rng) -> None:
    """Draw a blob figure: head, shirt, arms and legs."""
    (x0, y0, x1, y1), w, h = b, b[2] - b[0], b[3] - b[1]
    xm, hr = (x0 + x1) // 2, min(w // 3, h // 9)
    d.ellipse([xm - hr, y0, xm + hr, y0 + 2 * hr], fill=shade(rng, [(225, 180, 145)], 30))
    shirt = shade(rng, [(130, 130, 130)], 90)
    d.rounded_rectangle([xm - w // 4, y0 + 2 * hr, xm + w // 4, y0 + int(0.6 * h)], 4, fill=shirt)
    lw = max(2, w // 8)
    for s in (-1, 1):
        d.line([(xm + s * w // 4, y0 + 2 * hr + 3), (xm + s * (w // 2 - 1), y0 + int(0.5 * h))],
               fill=shirt, width=lw)
        d.line([(xm + s * w // 8, y0 + int(0.6 * h)), (xm + s * w // 4, y1)], fill=(40, 40, 70),
               width=lw + 1)


DRAW = {HAMBURGER: draw_hamburger, SANDWICH: draw_sandwich, SUBMARINE: draw_submarine,
        CAR: draw_car, PERSON: draw_person}


def background(rng: Rng, size: tuple[int, int]) -> Image.Image:
    """Return an uninformative scene: gradient, blotchy noise, fine noise and clutter shapes."""
    w, h = size
    ramp = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h)
    ramp = ramp[None, :, None] if len(ramp) == w else ramp[:, None, None]
    c0, c1 = rng.integers(30, 230, 3), rng.integers(30, 230, 3)
    img = c0 + (c1 - c0) * ramp + np.zeros((h, w, 3))
    blotch = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC)
    img = 0.7 * img + 0.3 * np.asarray(blotch) + rng.normal(0, 5, (h, w, 3))
    scene = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(8, 16))):
        x, y = int(rng.integers(-20, w)), int(rng.integers(-20, h))
        ex, ey = x + int(rng.integers(10, 90)), y + int(rng.integers(10, 90))
        col, kind = tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(3))
        if kind < 2:
            (d.rectangle if kind == 0 else d.ellipse)([x, y, ex, ey], fill=col)
        else:
            d.line([x, y, ex, ey], fill=col, width=int(rng.integers(2, 7)))
    return scene


def overlap(a: Box, b: Box) -> float:
    """Return intersection area over the smaller box's area."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def place(rng: Rng, label: str, group: bool, size: tuple[int, int], taken: list[Box]) -> Box:
    """Pick a box (possibly running off the image) that mostly avoids boxes already placed."""
    wmin, wmax, amin, amax = SHAPES[label]
    one = rng.uniform(wmin, wmax) * (0.7 if group else 1.0)  # groups: two smaller side by side
    bw, bh = one * (2 if group else 1), one / rng.uniform(amin, amax)
    off = rng.random() < 0.08  # a few truncated objects, as in real photos
    for attempt in range(200):
        scale = 0.97 ** (attempt // 20)  # shrink when the scene is crowded
        w, h = int(min(bw * scale, size[0] - 4)), int(min(bh * scale, size[1] - 4))
        mx, my = (-w // 5, -h // 5) if off else (2, 2)
        x0 = int(rng.integers(mx, size[0] - w - mx + 1))
        y0 = int(rng.integers(my, size[1] - h - my + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if all(overlap(box, t) < 0.12 for t in taken):
            return box
    return box


def compose(rng: Rng, labels: list[str], grouped: bool, size: tuple[int, int]) -> tuple[
        Image.Image, list[tuple[str, Box, bool]]]:
    """Draw the objects over clutter; when grouped, the first box holds two instances."""
    scene = background(rng, size)
    d = ImageDraw.Draw(scene)
    placed: list[tuple[str, Box, bool]] = []
    for k, label in enumerate(labels):
        group = grouped and k == 0
        box = place(rng, label, group, size, [b for _, b, _ in placed])
        xm = (box[0] + box[2]) // 2
        parts = [(box[0], box[1], xm - 2, box[3]), (xm + 2, *box[1:])] if group else [box]
        for part in parts:
            DRAW[label](d, part, rng)
        placed.append((label, box, group))
    # a per-scene white balance cast, like real cameras, so colour alone is a weak cue
    cast = np.asarray(scene) * rng.uniform(0.75, 1.2, 3) + rng.uniform(-20, 20)
    return Image.fromarray(np.clip(cast, 0, 255).astype(np.uint8)), placed


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes via a temp file in the same folder so readers never see partial files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; data files should be world-readable
    os.replace(tmp, path)


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    """Render rows as LF-terminated CSV like the published files."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue().encode()


def box_row(rng: Rng, image_id: str, label: str, rel: list[float], flags: list[int]) -> list[str]:
    """Build one 21-column box row; xclick rows carry the four extreme click points."""
    xmin, xmax, ymin, ymax = rel
    f = "{:.6f}".format
    if rng.random() < 0.15:
        source, clicks = "activemil", ["-1"] * 8
        if rng.random() < 0.5:  # activemil boxes were only verified, not attributed
            flags = [-1, -1, *flags[2:]]
    else:  # clicks: top, left, bottom, right extreme points, as in the published file
        source, xs, ys = "xclick", rng.uniform(xmin, xmax, 2), rng.uniform(ymin, ymax, 2)
        clicks = [f(v) for v in (xs[0], xmin, xs[1], xmax, ymin, ys[0], ymax, ys[1])]
    return [image_id, source, label, "1", *map(f, rel), *map(str, flags), *clicks]


def generate(out: Path) -> None:
    """Draw every scene and write JPEGs, box CSVs and image-info CSVs under out."""
    rng = np.random.default_rng(SEED)
    # ids are sorted within each subset because the published CSVs are sorted by ImageID
    ids = [h for _, count in SUBSETS for h in sorted(rng.bytes(8).hex() for _ in range(count))]
    n = len(ids)
    assert len(set(ids)) == n, "ImageIDs must be unique"
    subsets = [name for name, count in SUBSETS for _ in range(count)]
    perm = [int(i) for i in rng.permutation(n)]
    rotation = {i: "0.0" for i in range(n)}
    rotation.update({i: f"{90.0 * (k % 3 + 1):.1f}" for k, i in enumerate(perm[:18])})
    rotation.update({i: "" for i in perm[18:20]})
    gray, missing, subs = set(perm[20:38]), set(perm[38:40]), set(perm[40:50])
    depiction, groups = set(perm[50:54]), set(perm[54:58])
    boxes: dict[str, list[list[str]]] = {name: [] for name, _ in SUBSETS}
    infos: dict[str, list[list[str]]] = {name: [] for name, _ in SUBSETS}
    for i, (image_id, subset) in enumerate(zip(ids, subsets, strict=True)):
        size = (240, 320) if rng.random() < 0.25 else (320, 240)
        labels = [str(rng.choice(MAIN_CLASSES)) for _ in range(int(rng.integers(1, 4)))]
        if rotation[i] not in ("0.0", ""):
            labels[0] = CAR  # every rotated scene has a car so tests can check orientation
        labels += [SUBMARINE] if i in subs else []
        labels += [PERSON] if rng.random() < 1 / 3 else []
        scene, placed = compose(rng, labels, i in groups and labels[0] != CAR, size)
        rows = []
        for k, (label, box, group) in enumerate(placed):
            jit = rng.integers(-2, 3, 4)  # annotators never click the exact pixel edge
            x0, x1 = max(0, box[0] + jit[0]), min(size[0], box[2] + jit[1])
            y0, y1 = max(0, box[1] + jit[2]), min(size[1], box[3] + jit[3])
            rel = [x0 / size[0], x1 / size[0], y0 / size[1], y1 / size[1]]
            occluded = any(overlap(box, b) > 0 for j, (_, b, _) in enumerate(placed) if j > k)
            truncated = min(box[:2]) < 0 or box[2] > size[0] or box[3] > size[1]
            flags = [int(occluded), int(truncated), int(group), int(i in depiction and k == 0), 0]
            rows.append(box_row(rng, image_id, label, rel, flags))
        if i in gray:
            scene = scene.convert("L")
        if rotation[i] not in ("0.0", ""):
            scene = scene.rotate(-float(rotation[i]), expand=True)
        buf = io.BytesIO()
        scene.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        if i not in missing:  # the two missing ids mimic photos deleted upstream
            write_atomic(out / "images" / subset / f"{image_id}.jpg", data)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        artist = i % 7 + 1
        infos[subset].append([
            image_id, subset, f"{BASE_URL}/original/{image_id}.jpg",
            f"{BASE_URL}/photos/{image_id}", LICENSE, f"{BASE_URL}/people/artist-{artist}",
            f"Synthetic Artist {artist}", f"synthetic scene {i}", str(len(data)), md5,
            f"{BASE_URL}/thumb/{image_id}.jpg", rotation[i]])
        boxes[subset].extend(sorted(rows, key=lambda r: r[2]))
    oi = out / "openimages"
    write_atomic(oi / "v6/oidv6-train-annotations-bbox.csv", csv_bytes(BOX_HEADER, boxes["train"]))
    for name in ("validation", "test"):
        rows13 = [r[:13] for r in boxes[name]]
        write_atomic(oi / f"v5/{name}-annotations-bbox.csv", csv_bytes(BOX_HEADER[:13], rows13))
    for name, rows in infos.items():
        kind = "images-boxable" if name == "train" else "images"
        write_atomic(oi / f"2018_04/{name}/{name}-{kind}-with-rotation.csv",
                     csv_bytes(INFO_HEADER, rows))


def main(argv: list[str] | None = None) -> None:
    """Parse --out and generate the sample mirror there."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    generate(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
