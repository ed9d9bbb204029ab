"""The tf.data input pipeline from the crops table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(
    table: pd.DataFrame,
    root: Path,
    class_names: list[str],
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 1337,
) -> tf.data.Dataset:
    """Decode and resize crops in parallel into (pixels 0..255, label index) batches."""
    paths = [str(root / p) for p in table.CropPath]
    labels = [class_names.index(c) for c in table.Class]
    binary = len(class_names) == 2
    data = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        if binary:  # one sigmoid unit wants a float target of shape (1,)
            label = tf.cast(tf.reshape(label, (1,)), tf.float32)
        # The model resizes again (a no-op at this size); batching needs equal shapes here.
        return tf.image.resize(image, (image_size, image_size)), label

    return data.map(load, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
