"""Training on the train split, early stopping on validation, scoring on held-out test."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from model.architectures import seed_cnn
from model.data import make_dataset
from model.evaluate import classification_metrics
from model.predict import probabilities

MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    architecture: str = "seed-cnn"
    image_size: int = 150
    epochs: int = 10
    batch_size: int = 32
    patience: int = 3
    learning_rate: float = 1e-3
    seed: int = 1337


@dataclass(frozen=True)
class TrainResult:
    """Where the trained model is and how it scored on the test split."""

    model_path: Path
    class_names: list[str]
    metrics: dict
    seconds: float


def _split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    part = table[table.Split == name]
    if part.empty:
        raise ValueError(f"the {name} split is empty: select more images or change fractions")
    return part


def train(table: pd.DataFrame, crops_root: Path, out_dir: Path, config: TrainConfig) -> TrainResult:
    """Train the classifier, save it as .keras with metrics.json, and return the result."""
    if config.architecture != "seed-cnn":
        raise ValueError(f"unknown architecture {config.architecture!r}")
    keras.utils.set_random_seed(config.seed)
    class_names = sorted(table.Class.unique())
    if len(class_names) < 2:
        raise ValueError(f"need at least two classes with crops, got {class_names}")
    train_t, val_t, test_t = (_split(table, s) for s in ("train", "validation", "test"))

    def data(part: pd.DataFrame, training: bool):
        return make_dataset(part, crops_root, class_names, config.image_size,
                            config.batch_size, training, config.seed)

    model = seed_cnn(config.image_size, len(class_names), config.seed)
    binary = len(class_names) == 2
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                      restore_best_weights=True),
    ]
    start = time.monotonic()
    history = model.fit(data(train_t, True), validation_data=data(val_t, False),
                        epochs=config.epochs, callbacks=callbacks, shuffle=False, verbose=2)
    seconds = time.monotonic() - start

    probs = probabilities(model.predict(data(test_t, False), verbose=0), len(class_names))
    truth = np.array([class_names.index(c) for c in test_t.Class])
    metrics = classification_metrics(truth, probs, class_names)
    metrics.update(
        train_examples=len(train_t), validation_examples=len(val_t),
        epochs_run=len(history.history["loss"]), train_seconds=round(seconds, 2),
        config=asdict(config),
        history={k: [round(float(v), 5) for v in vals] for k, vals in history.history.items()},
    )
    model_path = out_dir / MODEL_FILE
    tmp = out_dir / f".tmp-{os.getpid()}-{MODEL_FILE}"  # Keras insists on the .keras suffix
    model.save(tmp)
    os.replace(tmp, model_path)
    tmp_metrics = out_dir / ".metrics.json.part"
    tmp_metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp_metrics, out_dir / "metrics.json")
    return TrainResult(model_path, class_names, metrics, seconds)
