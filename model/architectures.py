"""Model factories; every model resizes raw RGB pixels itself; augmentation wraps it in training."""

from __future__ import annotations

import math
from pathlib import Path

import keras
from keras import layers

ARCHITECTURES = ("transfer", "seed-cnn")
BACKBONES = ("MobileNetV3Small", "EfficientNetB0")
BACKBONE_LAYER = "backbone"


@keras.saving.register_keras_serializable(package="openimager")
class Augment(layers.Layer):
    """Random horizontal flip, rotation and zoom as ONE affine resampling, then contrast.

    Keras' RandomFlip, RandomRotation, RandomZoom and RandomContrast go over the batch once
    each: 26 ms of CPU per 16 x 128 px batch here against about 12 ms fused, next to some 70 ms
    for the seed CNN's own training step. Same ranges as those layers; identity outside
    training.
    """

    def __init__(self, rotation: float = 0.05, zoom: float = 0.1, contrast: float = 0.1,
                 seed: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.contrast, self.seed = rotation, zoom, contrast, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: object, training: bool | None = None) -> object:
        """Augment a (batch, height, width, 3) batch of 0..255 pixels when training."""
        if not training:
            return images
        ops, rand = keras.ops, keras.random
        batch, height, width = ops.shape(images)[0], ops.shape(images)[1], ops.shape(images)[2]
        angle = rand.uniform((batch,), -self.rotation, self.rotation, seed=self.generator)
        scale = rand.uniform((batch,), 1 - self.zoom, 1 + self.zoom, seed=self.generator)
        flip = ops.where(rand.uniform((batch,), seed=self.generator) < 0.5, -1.0, 1.0)
        cos, sin = ops.cos(angle * 2 * math.pi) * scale, ops.sin(angle * 2 * math.pi) * scale
        # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): about the
        # centre, mirror x, then rotate and scale.
        cx = (ops.cast(width, "float32") - 1) / 2
        cy = (ops.cast(height, "float32") - 1) / 2
        a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
        zeros = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy,
                               zeros, zeros], axis=1)
        # Edge pixels fill the corners, as in the article's ImageDataGenerator (and cheaper
        # than Keras' default reflection).
        images = ops.image.affine_transform(images, transform, fill_mode="nearest")
        factor = rand.uniform((batch, 1, 1, 1), 1 - self.contrast, 1 + self.contrast,
                              seed=self.generator)
        mean = ops.mean(images, axis=(1, 2), keepdims=True)
        return ops.clip((images - mean) * factor + mean, 0, 255)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """Augmentation keeps the shape."""
        return input_shape

    def get_config(self) -> dict:
        """The ranges and seed, for saving."""
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom,
                "contrast": self.contrast, "seed": self.seed}


def augmentation(seed: int) -> Augment:
    """Random flips, small rotations, zooms and contrast on 0..255 pixels; off at inference."""
    return Augment(seed=seed, name="augmentation")


def with_augmentation(model: keras.Model, seed: int) -> keras.Model:
    """The model to fit: augmentation, then model (sharing its weights). Only model is saved,
    so the served file holds no augmentation and needs no custom layer to load."""
    inputs = keras.Input(shape=(None, None, 3), name="pixels")
    return keras.Model(inputs, model(augmentation(seed)(inputs)), name=f"{model.name}_training")


def head_units(num_classes: int) -> tuple[int, str]:
    """One sigmoid unit for two classes, a softmax over N otherwise."""
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def _raw_input(image_size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Raw RGB of any size, resized to image_size, still 0..255."""
    inputs = keras.Input(shape=(None, None, 3), name="pixels")
    return inputs, layers.Resizing(image_size, image_size, name="resize")(inputs)


def seed_cnn(image_size: int, num_classes: int, seed: int = 1337, *,
             preprocess: bool = True) -> keras.Model:
    """The article's network: Conv 32/32/64 with max-pooling, Dense 64, Dropout 0.5.

    preprocess=False gives the article's own layout (0..1 pixels at image_size in, nothing else
    inside), which its ImageDataGenerator feeds; the benchmark compares the two.
    """
    if preprocess:
        inputs, x = _raw_input(image_size)
        x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    else:
        inputs = x = keras.Input(shape=(image_size, image_size, 3), name="unit_pixels")
    for filters in (32, 32, 64):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.5, seed=seed)(x)
    units, activation = head_units(num_classes)
    outputs = layers.Dense(units, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def resolve_weights(weights: str | Path | None) -> str | None:
    """'imagenet', an existing local weights file, or None ('none' and '' mean None)."""
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return None
    if str(weights) == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (or use 'imagenet'/'none')")
    return str(path)


def backbone(name: str, image_size: int, weights: str | None) -> keras.Model:
    """A Keras Applications backbone without its top, global-average pooled, taking 0..255."""
    # Both include their own input scaling (MobileNetV3's include_preprocessing Rescaling to
    # [-1, 1]; EfficientNet's Rescaling + Normalization), so nothing rescales before them.
    factories = {"MobileNetV3Small": keras.applications.MobileNetV3Small,
                 "EfficientNetB0": keras.applications.EfficientNetB0}
    if name not in factories:
        raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    if image_size < 32:
        raise ValueError(f"{name} needs images of at least 32 px, got {image_size}")
    try:
        # Built under its own name and renamed: EfficientNet names its weights file after
        # the model ("backbone_notop.h5" would be fetched, and does not exist).
        model = factories[name](include_top=False, weights=weights, pooling="avg",
                                input_shape=(image_size, image_size, 3))
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet" or "fetch failure" not in str(error).lower():
            raise
        raise RuntimeError(
            f"could not download the ImageNet weights of {name} (no internet?): set "
            "OPENIMAGER_WEIGHTS to a local .weights.h5 file of the backbone or to 'none', "
            "or OPENIMAGER_ARCHITECTURE=seed-cnn") from error
    model.name = BACKBONE_LAYER
    return model


def transfer(image_size: int, num_classes: int, seed: int = 1337, *,
             backbone_name: str = "MobileNetV3Small", weights: str | None = "imagenet",
             dropout: float = 0.2) -> keras.Model:
    """A pretrained backbone with a new head; the backbone is frozen when its weights are given."""
    weights = resolve_weights(weights)
    inputs, x = _raw_input(image_size)
    base = backbone(backbone_name, image_size, weights)
    if weights is None:
        x = base(x)  # from scratch: every layer trains, BatchNorm included
    else:
        base.trainable = False
        # training=False keeps BatchNorm on its pretrained statistics, also once the top layers
        # are unfrozen for fine-tuning (small batches would otherwise wreck them).
        x = base(x, training=False)
    x = layers.Dropout(dropout, seed=seed)(x)
    units, activation = head_units(num_classes)
    outputs = layers.Dense(units, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"transfer_{backbone_name.lower()}")


def unfreeze_top(model: keras.Model, count: int) -> int:
    """Make the top count layers of the backbone trainable (BatchNorm stays frozen); return how
    many layers with weights now train."""
    base = model.get_layer(BACKBONE_LAYER)
    base.trainable = True
    for index, layer in enumerate(base.layers):
        top = index >= len(base.layers) - count
        layer.trainable = top and not isinstance(layer, layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable and layer.weights)


def build(architecture: str, image_size: int, num_classes: int, seed: int,
          backbone_name: str = "MobileNetV3Small", weights: str | None = "imagenet") -> keras.Model:
    """The model named by architecture ('transfer' or 'seed-cnn')."""
    if architecture == "seed-cnn":
        return seed_cnn(image_size, num_classes, seed)
    if architecture == "transfer":
        return transfer(image_size, num_classes, seed, backbone_name=backbone_name,
                        weights=weights)
    raise ValueError(f"unknown architecture {architecture!r}: choose one of {ARCHITECTURES}")
