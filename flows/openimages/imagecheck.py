"""Checks that a downloaded file is the image it should be, before it enters the store.

`check_image` walks JPEGs and PNGs instead of decoding them: every segment or chunk in bounds,
headers consistent, the tables a scan needs defined, the scan data free of invalid markers up
to the EOI (PNG: every chunk's CRC up to IEND). That catches what a transfer does to a file
(cut short, noise, an error page instead) for a few percent of a decode's CPU. What the walk
cannot vouch for (other formats, arithmetic, lossless or 12-bit JPEG, missing tables, stray
bytes) is decoded. Bytes after the end marker are accepted, as decoders accept them: cameras
and phones append data there (MPF previews, maker trailers)."""

from __future__ import annotations

import base64
import io
import math
import re
import zlib
from dataclasses import dataclass

from PIL import Image

# JPEGs that must be decoded decode at 1/8 scale: libjpeg still reads every entropy-coded byte,
# so a truncated or corrupt scan fails as it would at full size, for about half the CPU.
DRAFT_SCALE = 8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing), RST0-7 or more 0xFF
# (fill); anything else is the marker that ends the scan.
SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
HUFFMAN_FRAMES = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman coding
OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
SOS, DHT, DQT, EOI, SOI = 0xDA, 0xC4, 0xDB, 0xD9, 0xD8
PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
# What Pillow refuses to open by default (twice its MAX_IMAGE_PIXELS). A constant, not
# Pillow's global: a process that also serves uploads lifts that global for its own limits.
MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)


class BadImage(Exception):
    """The bytes are not a complete, decodable image, or not the published ones."""


class Undecided(Exception):
    """The structure is valid as far as the walk goes, but only a decode can tell."""


@dataclass(frozen=True)
class Checked:
    """What a check found: the format, the size in pixels and whether it took a decode."""

    format: str
    width: int
    height: int
    decoded: bool = False


def check_image(body: bytes) -> Checked:
    """Check that bytes are one complete image (by structure, else by decoding); raise
    BadImage if not."""
    if not body:
        raise BadImage("not an image: the body is empty")
    try:
        if body[:2] == b"\xff\xd8":
            found = Checked("JPEG", *jpeg_size(body))
        elif body[:8] == PNG_SIGNATURE:
            found = Checked("PNG", *png_size(body))
        else:
            return decode_check(body)
    except Undecided:
        return decode_check(body)
    refuse_bomb(found.format, found.width, found.height)
    return found


def refuse_bomb(kind: str, width: int, height: int) -> None:
    """Raise BadImage for a size over MAX_PIXELS (a decompression bomb), before any decode."""
    if width * height > MAX_PIXELS:
        raise BadImage(f"{kind} of {width}x{height} pixels, over twice Pillow's limit of "
                       f"{MAX_PIXELS // 2}")


def _u16(body: bytes, at: int) -> int:
    return (body[at] << 8) | body[at + 1]


def jpeg_size(body: bytes) -> tuple[int, int]:
    """Width and height of a complete JPEG from a walk of its markers; raise BadImage or
    Undecided."""
    end, pos, size = len(body), 2, None
    frame: dict[int, int] = {}  # component id -> quantisation table
    progressive, scans = False, 0
    tables: set[tuple[str, int]] = set()
    while True:
        if pos + 2 > end:
            raise BadImage(f"JPEG cut short at byte {end}: no EOI marker")
        if body[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them, warning
            raise Undecided
        while pos + 2 < end and body[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = body[pos + 1]
        if marker == EOI:
            if not scans:
                raise BadImage(f"JPEG damaged: EOI at byte {pos} before any image data")
            return size  # type: ignore[return-value]
        if marker == SOI or marker == 0x00 or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            raise BadImage(f"JPEG damaged: marker 0x{marker:02X} out of place at byte {pos}")
        if marker < 0xC0:  # TEM and the reserved range: never written by real encoders
            raise Undecided if marker == 0x01 else BadImage(
                f"JPEG damaged: reserved marker 0x{marker:02X} at byte {pos}")
        if pos + 4 > end:
            raise BadImage(f"JPEG cut short at byte {end}: no EOI marker")
        length = _u16(body, pos + 2)
        start, stop = pos + 4, pos + 2 + length
        if length < 2 or stop > end:
            raise BadImage(f"JPEG damaged or cut short: segment 0x{marker:02X} at byte {pos} "
                           f"of {length} bytes ends past byte {end}")
        segment = body[start:stop]
        if marker in HUFFMAN_FRAMES or marker in OTHER_FRAMES:
            if size is not None or marker in OTHER_FRAMES or segment[:1] != b"\x08":
                raise Undecided  # a second frame, arithmetic/lossless coding, 12-bit samples
            size, frame = _frame(segment, pos)
            progressive = marker == 0xC2
        elif marker == DHT:
            tables |= _huffman(segment, pos)
        elif marker == DQT:
            tables |= _quantisation(segment, pos)
        elif marker == SOS:
            _scan(segment, pos, frame, tables, progressive)
            scans += 1
            found = SCAN_END.search(body, stop)
            if found is None:
                raise BadImage(f"JPEG cut short at byte {end}: no EOI marker after the scan data")
            stop = found.start()
        pos = stop


def _frame(segment: bytes, pos: int) -> tuple[tuple[int, int], dict[int, int]]:
    """Size and components of a frame header (SOF0-2), checked."""
    if len(segment) < 6:
        raise BadImage(f"JPEG damaged: frame header at byte {pos} too short")
    height, width, count = _u16(segment, 1), _u16(segment, 3), segment[5]
    if len(segment) != 6 + 3 * count or count not in (1, 3, 4) or width == 0:
        raise BadImage(f"JPEG damaged: frame header at byte {pos} ({width}x{height}, "
                       f"{count} components, {len(segment)} bytes)")
    if height == 0:
        raise Undecided  # the height comes later, in a DNL segment
    components = {}
    for at in range(6, len(segment), 3):
        sampling, table = segment[at + 1], segment[at + 2]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4) or table > 3:
            raise BadImage(f"JPEG damaged: frame header at byte {pos} has a bad component")
        components[segment[at]] = table
    if len(components) != count:
        raise BadImage(f"JPEG damaged: frame header at byte {pos} repeats a component")
    return (width, height), components


def _huffman(segment: bytes, pos: int) -> set[tuple[str, int]]:
    """The tables a DHT segment defines, checked against its length."""
    defined, at = set(), 0
    while at < len(segment):
        if at + 17 > len(segment) or segment[at] & 0x0F > 3 or segment[at] >> 4 > 1:
            raise BadImage(f"JPEG damaged: Huffman table segment at byte {pos}")
        counts = segment[at + 1:at + 17]
        values = sum(counts)
        symbols = segment[at + 17:at + 17 + values]
        dc = not segment[at] >> 4
        if values > 256 or len(symbols) < values or not _prefix_code(counts) or \
                (dc and max(symbols, default=0) > 15):
            raise BadImage(f"JPEG damaged: Huffman table segment at byte {pos}")
        defined.add(("DC" if dc else "AC", segment[at] & 0x0F))
        at += 17 + values
    return defined


def _prefix_code(counts: bytes) -> bool:
    """Whether code lengths give a Huffman code with no all-ones code (libjpeg's rule)."""
    code = 0
    for bits, count in enumerate(counts, 1):
        code += count
        if count and code >= 1 << bits:
            return False
        code <<= 1
    return True


def _quantisation(segment: bytes, pos: int) -> set[tuple[str, int]]:
    """The tables a DQT segment defines, checked against its length."""
    defined, at = set(), 0
    while at < len(segment):
        precision, table = segment[at] >> 4, segment[at] & 0x0F
        if precision > 1 or table > 3 or at + 1 + 64 * (precision + 1) > len(segment):
            raise BadImage(f"JPEG damaged: quantisation table segment at byte {pos}")
        defined.add(("Q", table))
        at += 1 + 64 * (precision + 1)
    return defined


def _scan(segment: bytes, pos: int, frame: dict[int, int], tables: set[tuple[str, int]],
          progressive: bool) -> None:
    """Check a scan header against the frame and the tables defined so far."""
    if not frame:
        raise BadImage(f"JPEG damaged: scan at byte {pos} before any frame header")
    count = segment[0] if segment else 0
    if not 1 <= count <= 4 or len(segment) != 4 + 2 * count:
        raise BadImage(f"JPEG damaged: scan header at byte {pos}")
    first_coefficient, last = segment[-3], segment[-2]
    refining, shift = segment[-1] >> 4, segment[-1] & 15
    band = (last != 0) if first_coefficient == 0 else (
        first_coefficient > last or last > 63 or count != 1)
    if progressive and (band or (refining and shift != refining - 1) or shift > 13):
        raise BadImage(f"JPEG damaged: progressive scan at byte {pos} has bad parameters")
    for at in range(1, 1 + 2 * count, 2):
        if segment[at] not in frame:
            raise BadImage(f"JPEG damaged: scan at byte {pos} names an unknown component")
        needed = {("Q", frame[segment[at]])}
        if not progressive or (first_coefficient == 0 and not refining):
            needed.add(("DC", segment[at + 1] >> 4))
        if not progressive or first_coefficient > 0:
            needed.add(("AC", segment[at + 1] & 0x0F))
        if not needed <= tables:
            raise Undecided  # e.g. Motion-JPEG frames rely on the standard Huffman tables


def png_size(body: bytes) -> tuple[int, int]:
    """Width and height of a complete PNG from a walk of its chunks, CRCs included; raise
    BadImage."""
    end, pos, size, data = len(body), 8, None, False
    view = memoryview(body)
    while True:
        if pos + 12 > end:
            raise BadImage(f"PNG cut short at byte {end}: no IEND chunk")
        length, kind = int.from_bytes(body[pos:pos + 4]), body[pos + 4:pos + 8]
        stop = pos + 12 + length
        name = kind.decode("latin-1")
        if not kind.isalpha():
            raise BadImage(f"PNG damaged: no chunk at byte {pos} of {end}")
        if stop > end:
            raise BadImage(f"PNG cut short at byte {end}: chunk {name} at byte {pos} needs "
                           f"{length} bytes")
        if zlib.crc32(view[pos + 4:stop - 4]) != int.from_bytes(body[stop - 4:stop]):
            raise BadImage(f"PNG damaged: CRC mismatch in chunk {name} at byte {pos}")
        if size is None:
            size = _png_header(body, pos, kind, length)
        elif kind == b"IDAT":
            data = True
        elif kind == b"IEND":
            if not data:
                raise BadImage(f"PNG damaged: IEND at byte {pos} before any IDAT chunk")
            return size
        elif kind == b"IHDR":
            raise BadImage(f"PNG damaged: a second IHDR at byte {pos}")
        pos = stop


def _png_header(body: bytes, pos: int, kind: bytes, length: int) -> tuple[int, int]:
    """Size from the IHDR chunk, checked."""
    if kind != b"IHDR" or length != 13:
        raise BadImage(f"PNG damaged: the first chunk is {kind!r} of {length} bytes, not IHDR")
    fields = body[pos + 8:pos + 21]
    width, height = int.from_bytes(fields[:4]), int.from_bytes(fields[4:8])
    depth, colour = fields[8], fields[9]
    if not width or not height or depth not in PNG_DEPTHS.get(colour, ()) or \
            fields[10] or fields[11] or fields[12] > 1:
        raise BadImage(f"PNG damaged: header {width}x{height}, depth {depth}, colour "
                       f"type {colour}")
    return width, height


def decode_check(body: bytes) -> Checked:
    """Decode the bytes (JPEGs in draft mode); raise BadImage if they are not an image."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size  # before the draft shrinks it
            refuse_bomb(image.format or "image", width, height)
            if image.format == "JPEG":
                image.draft(None, (max(1, width // DRAFT_SCALE), max(1, height // DRAFT_SCALE)))
            image.load()
            return Checked(image.format or "?", width, height, decoded=True)
    except BadImage:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own check, when not lifted
        raise BadImage(f"over twice Pillow's limit of {MAX_PIXELS // 2} pixels: "
                       f"{error}") from None
    except Exception as error:  # Pillow raises many kinds for bad bytes
        raise BadImage(f"not a decodable image ({type(error).__name__}: {error}; it starts "
                       f"{body[:16]!r})") from error


def md5_base64(hex_digest: str) -> str:
    """An MD5 hex digest in the base64 form Open Images publishes (OriginalMD5)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def published(value: object) -> bool:
    """Whether a metadata value is present (not None, NaN or empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() != ""


def check_original(size: int, md5_hex: str, original_size: object,
                   original_md5: object) -> None:
    """Raise BadImage unless size and MD5 match the published OriginalSize and OriginalMD5."""
    if published(original_size) and int(float(original_size)) != size:  # type: ignore[arg-type]
        raise BadImage(f"size {size} differs from OriginalSize {int(float(original_size))}")
    if published(original_md5) and md5_base64(md5_hex) != str(original_md5).strip():
        raise BadImage(f"md5 {md5_base64(md5_hex)} differs from OriginalMD5 {original_md5}")
