"""Training on the train split, early stopping on validation, scoring on held-out test."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import keras
import pandas as pd

from model import calibration, report
from model.architectures import build, resolve_weights, unfreeze_top, with_augmentation
from model.data import class_weights, label_indices, make_dataset
from model.evaluate import metrics_of, outcome_of
from model.intervals import holdout, subset
from model.report import atomic_dest, write_json

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    architecture: str = "transfer"  # or "seed-cnn", the article's network
    backbone: str = "MobileNetV3Small"  # or "EfficientNetB0" (transfer only)
    weights: str | None = "imagenet"  # or a local .weights.h5 of the backbone, or None
    image_size: int = 150
    epochs: int = 10
    batch_size: int = 32
    patience: int = 3
    learning_rate: float = 1e-3
    fine_tune_layers: int = 0  # top backbone layers trained after the head; 0: no fine-tuning
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5
    class_weights: bool = False  # weigh classes by their inverse frequency in the train split
    # Share of test photos (by a hash of ImageID) the promotion gate never scores: their
    # accuracy is a figure that choosing among models has not bent.
    holdout_share: float = 0.25
    cache: bool = True  # keep decoded crops in memory between epochs
    tensorboard: bool = True
    seed: int = 1337


@dataclass(frozen=True)
class TrainResult:
    """Where the trained model is and how it scored on the test split."""

    model_path: Path
    class_names: list[str]
    metrics: dict
    seconds: float
    model: keras.Model | None = field(default=None, repr=False, compare=False)


def _split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    part = table[table.Split == name]
    if part.empty:
        raise ValueError(f"the {name} split is empty: select more images or change fractions")
    return part


def cosine(base: float, first: int, last: int, floor: float = 0.05) -> keras.callbacks.Callback:
    """Cosine decay per epoch from base at `first` to floor * base at `last` - 1 (logged)."""
    def rate(epoch: int, _: float | None = None) -> float:
        progress = min(max(epoch - first, 0) / max(last - first - 1, 1), 1.0)
        return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return keras.callbacks.LearningRateScheduler(rate)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save a model whenever validation loss improves, atomically (a crash leaves the last)."""

    def __init__(self, model: keras.Model, dest: Path) -> None:
        super().__init__()
        self.saved, self.dest, self.best = model, dest, math.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Save when val_loss beat every earlier epoch."""
        loss = (logs or {}).get("val_loss", math.inf)
        if loss < self.best:
            self.best = loss
            with atomic_dest(self.dest) as tmp:
                self.saved.save(tmp)


def _fit(trainer: keras.Model, model: keras.Model, train_data: object, val_data: object,
         config: TrainConfig, out_dir: Path, run: str, lr: float, first: int, last: int,
         weights: dict[int, float] | None) -> dict[str, list[float]]:
    """One phase of training (epochs first..last-1) with stopping, checkpoints, schedule, logs.

    trainer (augmentation + model) is fitted; model, which shares its weights, is checkpointed.
    """
    binary = model.output_shape[-1] == 1
    trainer.compile(optimizer=keras.optimizers.Adam(lr),
                    loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                      restore_best_weights=True),
        AtomicCheckpoint(model, out_dir / "checkpoints" / f"{run}.keras"),
        cosine(lr, first, last),
    ]
    if config.tensorboard:  # `tensorboard --logdir <model dir>/logs`
        callbacks.append(keras.callbacks.TensorBoard(out_dir / "logs" / run, write_graph=False))
    history = trainer.fit(train_data, validation_data=val_data, initial_epoch=first,
                          epochs=last, callbacks=callbacks, class_weight=weights,
                          shuffle=False, verbose=2)  # the dataset shuffles itself, seeded
    return {k: [round(float(v), 6) for v in vals] for k, vals in history.history.items()}


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def holdout_metrics(answers: object, share: float) -> dict:
    """Accuracy and macro-F1, with intervals, on the test photos the gate never scores."""
    keep = holdout(answers.photos, share)
    found = metrics_of(subset(answers, keep)) if keep.any() else {}
    return {"share": share, "test_examples": int(keep.sum()),
            **{k: found.get(k) for k in ("accuracy", "macro_f1")},
            "intervals": {k: (found.get("intervals") or {}).get(k)
                          for k in ("accuracy", "macro_f1", "photos")}}


def calibrate(model: keras.Model, class_names: list[str], val_data: object,
              val_t: pd.DataFrame, test_data: object, test_t: pd.DataFrame,
              out_dir: Path) -> tuple[keras.Model, dict]:
    """Fit the temperature on the validation split; return the calibrated model and the test
    split's expected calibration error before and after (with report.RELIABILITY_PNG)."""
    logits = calibration.logits_model(model)
    fitted = calibration.fit_temperature(logits.predict(val_data, verbose=0),
                                         label_indices(val_t, class_names))
    temperature = 1.0 if fitted is None else fitted  # not identifiable: no scaling
    test_logits, truth = logits.predict(test_data, verbose=0), label_indices(test_t,
                                                                             class_names)
    before = calibration.reliability(calibration.probabilities(test_logits), truth)
    after = calibration.reliability(calibration.probabilities(test_logits, temperature), truth)
    report.reliability_chart(before, after, temperature, out_dir / report.RELIABILITY_PNG)
    return calibration.with_temperature(logits, temperature), {
        "temperature": temperature, "identifiable": fitted is not None,
        "fitted_on": "validation", "measured_on": "test",
        "ece_before": before["ece"], "ece_after": after["ece"],
        "bins": calibration.BINS, "reliability_after": after["bins"]}


def train(table: pd.DataFrame, crops_root: Path, out_dir: Path, config: TrainConfig) -> TrainResult:
    """Train, score on the test split, save model.keras, metrics.json and PNGs into out_dir."""
    keras.utils.set_random_seed(config.seed)
    class_names = sorted(table.Class.unique())
    if len(class_names) < 2:
        raise ValueError(f"need at least two classes with crops, got {class_names}")
    train_t, val_t, test_t = (_split(table, s) for s in ("train", "validation", "test"))
    weights = resolve_weights(config.weights) if config.architecture == "transfer" else None

    def data(part: pd.DataFrame, training: bool) -> object:
        return make_dataset(part, crops_root, class_names, config.image_size, config.batch_size,
                            training, config.seed, cache=config.cache)

    model = build(config.architecture, config.image_size, len(class_names), config.seed,
                  config.backbone, weights)
    trainer = with_augmentation(model, config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    train_data, val_data = data(train_t, True), data(val_t, False)
    balance = class_weights(table, class_names) if config.class_weights else None
    start = time.monotonic()
    history = _fit(trainer, model, train_data, val_data, config, out_dir, f"{run}-head",
                   config.learning_rate, 0, config.epochs, balance)
    head_epochs = len(history["loss"])
    fine_tuned, fine_tune_kept = 0, None
    if weights is not None and config.fine_tune_layers > 0 and config.fine_tune_epochs > 0:
        head_weights, head_best = model.get_weights(), min(history["val_loss"])
        fine_tuned = unfreeze_top(model, config.fine_tune_layers)
        more = _fit(trainer, model, train_data, val_data, config, out_dir, f"{run}-fine-tune",
                    config.fine_tune_learning_rate, head_epochs,
                    head_epochs + config.fine_tune_epochs, balance)
        history = {k: history.get(k, []) + more.get(k, []) for k in history.keys() | more.keys()}
        # Fine-tuning's own early stopping only compares its epochs with each other.
        fine_tune_kept = min(more["val_loss"]) <= head_best
        if not fine_tune_kept:
            model.set_weights(head_weights)
    seconds = time.monotonic() - start

    model, calibrated = calibrate(model, class_names, val_data, val_t,
                                  data(test_t, False), test_t, out_dir)
    answers = outcome_of(model, class_names, test_t, crops_root, config.image_size,
                         config.batch_size)
    metrics = metrics_of(answers)
    metrics.update(
        holdout=holdout_metrics(answers, config.holdout_share),
        calibration=calibrated,
        train_examples=len(train_t), validation_examples=len(val_t),
        epochs_run=len(history["loss"]), head_epochs=head_epochs,
        fine_tuned_layers=fine_tuned, fine_tune_kept=fine_tune_kept,
        train_seconds=round(seconds, 2),
        class_weights=balance, config=asdict(config), weights=weights,
        weights_sha256=_sha256(weights) if weights not in (None, "imagenet") else None,
        history=history,
    )
    report.training_curves(history, out_dir / report.CURVES_PNG,
                           head_epochs if fine_tuned else None)
    report.confusion_matrix(metrics["confusion_matrix"], class_names,
                            out_dir / report.CONFUSION_PNG)
    model_path = out_dir / MODEL_FILE
    with atomic_dest(model_path) as tmp:
        model.save(tmp)
    write_json(out_dir / METRICS_FILE, metrics)
    return TrainResult(model_path, class_names, metrics, seconds, model)
