"""What a maximum-size upload costs the service, against the plain full decode.

1. Decode: one upload at its format's pixel limit (and under the 10 MB upload limit), decoded
   to the model's input in a fresh process by service.images.prepare, and by the plain way
   (full decode, convert, resize: the baseline). CPU from getrusage, peak memory
   from /proc (VmHWM).
2. Server: a real `bentoml serve` of a tiny model. 8 clients post normal photos; p99 alone,
   then while 4 more clients post maximum-size PNGs; the worker's memory (from /proc)
   idle, at its peak, and after the burst.

    .venv/bin/python benchmarks/upload.py            # the full run
    .venv/bin/python benchmarks/upload.py --quick    # small images, short loads, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Run in a fresh process: decode one file one way, print CPU seconds and peak memory.
DECODE = """
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
import numpy as np
from PIL import Image
from service.config import Limits
from service.images import prepare, to_rgb

def plain(path, size):
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        return np.asarray(to_rgb(image).resize((size, size), Image.Resampling.BILINEAR))

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def high_water_mb():
    # Not ru_maxrss: Linux carries it over from the parent across fork and exec.
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

path, how, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
idle = high_water_mb()
start = cpu()
if how == "plain":
    plain(path, size)
else:
    prepare(path, size, Limits(max_pixels=10**9, max_full_decode_pixels=10**9))
peak = high_water_mb()
print(f"{cpu() - start:.3f} {peak:.1f} {idle:.1f}")
"""


def pattern(width: int, height: int):
    """A picture that compresses like a screenshot (tiles, gradients), as an L image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[:height, :width]
    grey = ((x // 64 + y // 64) % 2 * 120 + (x % 97) + (y % 31)).astype(np.uint8)
    return Image.fromarray(grey, "L")


def rgb(width: int, height: int):
    """Three different channels of the pattern."""
    from PIL import Image

    grey = pattern(width, height)
    return Image.merge("RGB", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                               grey.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])


def sides(pixels: int) -> tuple[int, int]:
    """A 3:2 frame of at most this many pixels."""
    height = int((pixels * 2 / 3) ** 0.5)
    return pixels // height, height


def uploads(folder: Path, scale: float) -> list[tuple[str, Path]]:
    """One file per accepted format at its pixel limit (times scale), each under 10 MB."""
    import numpy as np
    from PIL import Image

    from service.config import Limits

    limits = Limits()
    full = int(limits.max_full_decode_pixels * scale)
    cases = {
        "JPEG baseline": ("jpg", int(limits.max_pixels * scale), lambda w, h: (
            rgb(w, h), {"quality": 85})),
        "JPEG progressive 4:4:4": ("jpg", full, lambda w, h: (
            rgb(w, h), {"quality": 85, "progressive": True, "subsampling": 0})),
        "PNG RGBA": ("png", full, lambda w, h: (
            Image.merge("RGBA", [*rgb(w, h).split(), pattern(w, h)]), {})),
        "PNG 16-bit grey": ("png", full, lambda w, h: (
            Image.fromarray(np.asarray(pattern(w, h)).astype(np.uint16) * 257), {})),
        "GIF": ("gif", full, lambda w, h: (pattern(w, h).point(lambda v: v // 32 * 32), {})),
        "BMP 1-bit": ("bmp", full, lambda w, h: (pattern(w, h).convert("1"), {})),
        "WebP": ("webp", full // 4, lambda w, h: (rgb(w, h), {"quality": 80, "method": 0})),
    }
    made = []
    for name, (suffix, pixels, build) in cases.items():
        image, options = build(*sides(pixels))
        path = folder / f"{name.split()[0].lower()}-{len(made)}.{suffix}"
        image.save(path, **options)
        if path.stat().st_size > limits.max_upload_bytes:
            raise SystemExit(f"{name}: {path.stat().st_size} bytes, over the upload limit")
        made.append((name, path))
    return made


def decode_cost(path: Path, how: str, size: int) -> tuple[float, float, float]:
    """CPU seconds, peak MB and idle MB of one decode in a fresh process."""
    done = subprocess.run([sys.executable, "-c", DECODE, str(path), how, str(size), str(ROOT)],
                          capture_output=True, text=True, check=True, timeout=600)
    cpu, peak, idle = map(float, done.stdout.split())
    return cpu, peak, idle


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def http_worker_rss(pid: int) -> float:
    """Resident MB of the worker of the server under pid (it decodes and holds the model)."""
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if "_bentoml_impl.worker" in command:
            return child.memory_info().rss / 2**20
    raise RuntimeError("no service worker found")


def p99_ms(load) -> tuple[float, int, int]:
    """p99 latency of the answered requests in ms, how many, and how many failed."""
    ok = [a.end - a.start for a in load.answers if a.status == 200]
    return 1000 * percentile(ok, 99), len(ok), len(load.answers) - len(ok)


def serve(workdir: Path, size: int, seconds: float, big: Path) -> dict:
    """p99 of normal requests alone and beside large uploads; the worker's memory."""
    from flows.servers.local import BentoServer
    from tests.servicekit import Load, encoded, picture, register_tiny_model

    tag = register_tiny_model(workdir / "model", image_size=size)
    photo = encoded(picture(3, (640, 480)))
    with BentoServer(tag, log_path=workdir / "bentoml.log") as server:
        with Load(server.url, 8, photo):  # warm-up
            time.sleep(2)
        time.sleep(1)
        idle = http_worker_rss(server.process.pid)
        with Load(server.url, 8, photo) as alone:
            time.sleep(seconds)
        peak, stop = [idle], threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                peak.append(http_worker_rss(server.process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Load(server.url, 4, big.read_bytes(), timeout=120) as large, \
                Load(server.url, 8, photo) as beside:
            time.sleep(seconds)
        stop.set()
        sampler.join()
        time.sleep(2)
        after = http_worker_rss(server.process.pid)
    alone_p99, alone_n, alone_failed = p99_ms(alone)
    beside_p99, beside_n, beside_failed = p99_ms(beside)
    return {"p99_alone_ms": round(alone_p99, 1), "p99_beside_large_ms": round(beside_p99, 1),
            "p99_ratio": round(beside_p99 / alone_p99, 2), "requests_alone": alone_n,
            "requests_beside": beside_n, "failed": alone_failed + beside_failed,
            "large_uploads": sum(a.status == 200 for a in large.answers),
            "large_failed": sum(a.status != 200 for a in large.answers),
            "worker_idle_mb": round(idle), "worker_peak_mb": round(max(peak)),
            "worker_after_mb": round(after), "worker_after_minus_idle_mb": round(after - idle)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small images, short loads")
    parser.add_argument("--seconds", type=float, default=20, help="each load phase")
    parser.add_argument("--size", type=int, default=150, help="the model's input size")
    args = parser.parse_args()
    scale = 0.05 if args.quick else 1.0
    if args.quick:
        args.seconds, args.size = 3, 32
    with tempfile.TemporaryDirectory(prefix="openimager-upload-") as tmp:
        workdir = Path(tmp)
        os.environ["BENTOML_HOME"] = str(workdir / "bentoml")  # a store of its own
        made = uploads(workdir, scale)
        decodes = []
        for name, path in made:
            ours = decode_cost(path, "prepare", args.size)
            plain = decode_cost(path, "plain", args.size)
            from PIL import Image

            with Image.open(path) as image:
                megapixels = image.width * image.height / 1e6
            decodes.append({"format": name, "megapixels": round(megapixels, 1),
                            "bytes": path.stat().st_size, "cpu_s": ours[0], "peak_mb": ours[1],
                            "process_idle_mb": ours[2], "plain_cpu_s": plain[0],
                            "plain_peak_mb": plain[1]})
            print(f"decode {name:<23} {megapixels:5.1f} Mpx {path.stat().st_size / 1e6:5.2f} MB: "
                  f"{ours[0]:.2f} s CPU, peak {ours[1]:.0f} MB (plain decode {plain[0]:.2f} s, "
                  f"{plain[1]:.0f} MB: {plain[0] / max(ours[0], 1e-3):.1f}x the CPU)", flush=True)
        png = next(path for name, path in made if name == "PNG RGBA")
        server = serve(workdir, args.size, args.seconds, png)
    print(json.dumps({"decodes": decodes, "server": server}))
    worst_cpu = max(d["cpu_s"] for d in decodes)
    worst_peak = max(d["peak_mb"] for d in decodes)
    print(f"upload: worst decode {worst_cpu:.2f} s CPU and {worst_peak:.0f} MB peak; p99 at c=8 "
          f"{server['p99_alone_ms']} ms alone vs {server['p99_beside_large_ms']} ms beside 4 "
          f"clients of max-size PNGs ({server['p99_ratio']}x); worker "
          f"{server['worker_idle_mb']} MB idle, {server['worker_peak_mb']} MB peak, "
          f"{server['worker_after_mb']} MB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
