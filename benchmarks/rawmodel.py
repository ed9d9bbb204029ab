"""The model alone: predict_on_batch over prepared images at each batch size, run as its own
process so TensorFlow gets its thread settings before it starts.

    python benchmarks/rawmodel.py MODEL_FILE IMAGE_SIZE SECONDS THREADS IMAGE...

THREADS 0 leaves TensorFlow's defaults (every core). Prints one JSON line: for each batch size,
images per second and CPU milliseconds per image (this process, all its threads).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The service's adaptive batches fall into these histogram buckets (BentoML's /metrics).
BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def measure(model_file: Path, size: int, seconds: float, threads: int, images: list[Path]
            ) -> dict[int, dict[str, float]]:
    """Images per second and CPU ms per image of predict_on_batch, by batch size."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np

    from service.images import prepare

    model = keras.saving.load_model(model_file, compile=False)
    prepared = np.stack([prepare(path, size) for path in images])
    results = {}
    for batch_size in BATCH_SIZES:
        batch = prepared[np.arange(batch_size) % len(prepared)]
        model.predict_on_batch(batch)  # a new shape traces once
        model.predict_on_batch(batch)
        done, cpu, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < seconds or done < 4 * batch_size:
            model.predict_on_batch(batch)
            done += batch_size
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        results[batch_size] = {"img_s": done / wall, "cpu_ms": 1000 * cpu / done}
    return results


def main() -> None:
    """Command line entry."""
    model_file, size, seconds, threads, *paths = sys.argv[1:]
    images = [Path(path) for path in paths]
    print(json.dumps(measure(Path(model_file), int(size), float(seconds), int(threads), images)))


if __name__ == "__main__":
    main()
