"""The tf.data input pipeline from the crops table, and class weights.

A table with Shard and Row columns streams its crops' JPEG bytes out of the Parquet shards
under root (a generator over each shard's image column, in the table's order, so every
prediction lines up with its row and ImageID); an older table's CropPath names files under root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def label_indices(table: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    """The index in class_names of every row's class."""
    unknown = sorted(set(table.Class) - set(class_names))
    if unknown:
        raise ValueError(f"classes {unknown} are not among the model's classes {class_names}")
    return np.array([class_names.index(c) for c in table.Class], dtype=np.int32)


def decode(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read a JPEG and resize it to image_size square, as uint8 RGB."""
    return decode_bytes(tf.io.read_file(path), image_size)


def decode_bytes(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a JPEG's bytes and resize them to image_size square, as uint8 RGB."""
    image = tf.io.decode_jpeg(data, channels=3)
    # Bilinear without antialiasing, the same as the model's own Resizing layer, so the model's
    # resize is a no-op here and does the same thing on a raw upload when serving.
    resized = tf.image.resize(image, (image_size, image_size), method="bilinear")
    # uint8 keeps the cache at a quarter of float32's size (150 px: 67 kB a crop).
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def make_dataset(
    table: pd.DataFrame,
    root: Path,
    class_names: list[str],
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 1337,
    cache: bool = False,
) -> tf.data.Dataset:
    """(pixels 0..255 float32, label) batches: parallel decode and resize, cache, seeded
    shuffle in training, batch, prefetch. Labels are indices, or a (1,) float for two classes."""
    labels = label_indices(table, class_names)
    binary = len(class_names) == 2
    sharded = "Shard" in table
    if sharded:
        data = shard_source(table, root, labels)
    else:
        data = tf.data.Dataset.from_tensor_slices(([str(root / p) for p in table.CropPath],
                                                   labels))

    def load(source: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if binary:  # one sigmoid unit wants a float target of shape (1,)
            label = tf.cast(tf.reshape(label, (1,)), tf.float32)
        pixels = decode_bytes(source, image_size) if sharded else decode(source, image_size)
        return pixels, label

    data = data.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:  # decoded crops stay in memory: epochs after the first skip JPEG decoding
        data = data.cache()
    if training:  # after the cache, so every epoch gets a new order
        data = data.shuffle(max(len(table), 1), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    data = data.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return data.prefetch(AUTOTUNE)


def shard_source(table: pd.DataFrame, root: Path, labels: np.ndarray) -> tf.data.Dataset:
    """(JPEG bytes, label) of every row, in the table's order, read from its shards under root:
    each run of rows from one shard is one read of that shard's image column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards, rows = table.Shard.tolist(), table.Row.to_numpy()

    def runs() -> object:
        start = 0
        for end in range(1, len(shards) + 1):
            if end == len(shards) or shards[end] != shards[start]:
                # One thread: pyarrow's pool would compete with the decoders for the cores.
                column = pq.read_table(root / shards[start], columns=["image"],
                                       use_threads=False).column("image")
                images = column.combine_chunks().field("bytes").take(
                    pa.array(rows[start:end], pa.int64()))
                yield images.to_numpy(zero_copy_only=False), labels[start:end]
                start = end

    spec = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32))
    # Reading runs ahead of decoding: the next shard's bytes are ready when the decoders want them.
    data = tf.data.Dataset.from_generator(runs, output_signature=spec).prefetch(2).unbatch()
    # Known length: Keras counts the steps of an epoch instead of running off its end.
    return data.apply(tf.data.experimental.assert_cardinality(len(table)))


def class_weights(table: pd.DataFrame, class_names: list[str]) -> dict[int, float]:
    """Balanced weights from the train split: n / (k * n_c), so every class counts equally."""
    counts = table[table.Split == "train"].Class.value_counts()
    total, k = int(counts.sum()), len(class_names)
    return {i: round(total / (k * int(counts.get(c, 0))), 6) if counts.get(c, 0) else 0.0
            for i, c in enumerate(class_names)}
