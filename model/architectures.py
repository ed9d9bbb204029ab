"""Model factories; every model resizes and rescales raw RGB pixels itself."""

from __future__ import annotations

import keras
from keras import layers


def augmentation(seed: int) -> keras.Sequential:
    """Random flips, small rotations, zooms and contrast; Keras runs them only in training."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.05, seed=seed),
            layers.RandomZoom(0.1, seed=seed),
            layers.RandomContrast(0.1, seed=seed),
        ],
        name="augmentation",
    )


def head_units(num_classes: int) -> tuple[int, str]:
    """One sigmoid unit for two classes, a softmax over N otherwise."""
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def seed_cnn(image_size: int, num_classes: int, seed: int = 1337) -> keras.Model:
    """The article's network: Conv 32/32/64 with max-pooling, Dense 64, Dropout 0.5."""
    inputs = keras.Input(shape=(None, None, 3), name="pixels")
    x = layers.Resizing(image_size, image_size, name="resize")(inputs)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    x = augmentation(seed)(x)
    for filters in (32, 32, 64):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.5, seed=seed)(x)
    units, activation = head_units(num_classes)
    outputs = layers.Dense(units, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")
