"""The Keras side: input pipeline, model behaviour, a tiny real training run and its metrics."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from model.evaluate import classification_metrics
from model.predict import probabilities, top_k

# find_spec, not importorskip: importing Keras at collection costs every worker seconds.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                reason="keras is not installed")


def make_crops(root, classes=("Circle", "Square"), per_class=24, seed=0) -> pd.DataFrame:
    """Tiny labelled crops of two easy shapes, split by a fixed pattern."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls in classes:
        for i in range(per_class):
            image = Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(0, 80, 3)))
            pixels = np.asarray(image).copy()
            yy, xx = np.mgrid[:40, :40]
            mask = ((xx - 20) ** 2 + (yy - 20) ** 2 < 150) if cls == "Circle" else (
                (abs(xx - 20) < 11) & (abs(yy - 20) < 11))
            pixels[mask] = (230, 200, 40) if cls == "Circle" else (40, 200, 230)
            rel = f"{cls}/{i}.jpg"
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            split = "test" if i % 6 == 0 else "validation" if i % 6 == 1 else "train"
            rows.append({"CropPath": rel, "Class": cls, "Split": split, "ImageID": f"{cls}{i}"})
    return pd.DataFrame(rows)


def test_dataset_batches_are_shaped_and_labelled(tmp_path):
    from model.data import make_dataset

    table = make_crops(tmp_path)
    data = make_dataset(table, tmp_path, ["Circle", "Square"], 32, 8, training=False)
    images, labels = next(iter(data))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8, 1)
    assert float(images.numpy().max()) > 1.0  # raw pixels: the model rescales them itself
    expected = [float(c == "Square") for c in table.Class[:8]]
    assert labels.numpy()[:, 0].tolist() == expected


def as_shards(table, root, dest, per_shard=10):
    """The crops of table written into shards of per_shard rows; the table with Shard, Row."""
    from flows.openimages.shards import shard_bytes, write_shard

    rows = table.to_dict("records")
    shards, numbers = [], []
    for start in range(0, len(rows), per_shard):
        part = rows[start:start + per_shard]
        name = write_shard(dest, shard_bytes(part, [(root / r["CropPath"]).read_bytes()
                                                    for r in part]))
        shards += [name] * len(part)
        numbers += list(range(len(part)))
    return table.assign(Shard=shards, Row=numbers)


def test_shards_stream_the_same_examples_in_the_table_order(tmp_path):
    from model.data import make_dataset

    table = make_crops(tmp_path / "crops")
    sharded = as_shards(table, tmp_path / "crops", tmp_path / "shards")
    classes = ["Circle", "Square"]
    # Every third row, out of shard order: each row still gets its own pixels and label.
    rows = pd.concat([sharded.iloc[1::3], sharded.iloc[::3]])
    files = make_dataset(rows.drop(columns=["Shard", "Row"]), tmp_path / "crops", classes, 32,
                         8, training=False)
    shards = make_dataset(rows, tmp_path / "shards", classes, 32, 8, training=False)
    for (a, y), (b, z) in zip(files, shards, strict=True):
        assert np.array_equal(a.numpy(), b.numpy()) and np.array_equal(y.numpy(), z.numpy())


def test_training_batches_are_shuffled_by_the_seed_and_cached(tmp_path):
    from model.data import make_dataset

    table = make_crops(tmp_path)
    classes = ["Circle", "Square"]

    def order(seed):
        data = make_dataset(table, tmp_path, classes, 32, 48, training=True, seed=seed,
                            cache=True)
        return [batch[1].numpy()[:, 0].tolist() for batch in data]

    first = order(7)
    assert first == order(7)  # same seed, same order
    assert first[0] != [float(c == "Square") for c in table.Class]  # but not the table's
    data = make_dataset(table, tmp_path, classes, 32, 48, training=True, seed=7, cache=True)
    epochs = [sorted(batch[1].numpy()[:, 0].tolist()) for _ in range(2) for batch in data]
    assert epochs[0] == epochs[1]  # the cached second epoch holds the same crops


def test_augmentation_is_off_at_inference():
    from model.architectures import seed_cnn, with_augmentation

    model = seed_cnn(32, 3)
    trainer = with_augmentation(model, seed=0)
    x = np.random.default_rng(0).integers(0, 255, (2, 50, 40, 3)).astype("float32")
    first, second = trainer(x, training=False), model(x, training=False)
    np.testing.assert_allclose(first, second)
    assert "augmentation" not in [layer.name for layer in model.layers]  # the served model
    assert model.output_shape == (None, 3)
    assert seed_cnn(32, 2).output_shape == (None, 1)
    augment = trainer.get_layer("augmentation")
    np.testing.assert_allclose(augment(x, training=False), x)
    assert not np.allclose(augment(x, training=True), x)  # but on in training


def test_fused_augmentation_flips_exactly():
    from model.architectures import Augment

    x = np.random.default_rng(1).integers(0, 255, (16, 9, 12, 3)).astype("float32")
    flipped = np.asarray(Augment(rotation=0.0, zoom=0.0, contrast=0.0, seed=3)(x, training=True))
    mirrored = [np.allclose(out, img[:, ::-1], atol=1e-3) for out, img in zip(flipped, x,
                                                                               strict=True)]
    kept = [np.allclose(out, img, atol=1e-3) for out, img in zip(flipped, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored) and any(kept)
    moved = np.asarray(Augment(seed=3)(x, training=True))
    assert moved.shape == x.shape and moved.min() >= 0 and moved.max() <= 255


def test_class_weights_balance_the_train_split():
    from model.data import class_weights

    table = pd.DataFrame({"Class": ["a"] * 6 + ["b"] * 2 + ["b"] * 5,
                          "Split": ["train"] * 8 + ["test"] * 5})
    assert class_weights(table, ["a", "b"]) == {0: round(8 / 12, 6), 1: 2.0}


def test_tiny_training_run_saves_model_and_held_out_metrics(tmp_path):
    from model.train import TrainConfig, train

    table = make_crops(tmp_path / "crops")
    result = train(table, tmp_path / "crops", tmp_path / "model",
                   TrainConfig(architecture="seed-cnn", image_size=32, epochs=2, batch_size=8,
                               patience=1, class_weights=True))
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["epochs_run"] == 2 and len(metrics["history"]["val_loss"]) == 2
    assert metrics["history"]["learning_rate"][1] < metrics["history"]["learning_rate"][0]
    assert metrics["class_weights"] == {"0": 1.0, "1": 1.0}
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    for report in ("training_curves.png", "confusion_matrix.png"):
        assert (tmp_path / "model" / report).read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "model" / "checkpoints").glob("*.keras"))
    assert list((tmp_path / "model" / "logs").rglob("events.out.tfevents.*"))
    assert metrics["test_examples"] == int((table.Split == "test").sum())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert result.class_names == ["Circle", "Square"]
    import keras

    reloaded = keras.saving.load_model(result.model_path, compile=False)
    pixels = np.asarray(Image.open(tmp_path / "crops" / table.CropPath[0]))[None]
    assert reloaded.predict(pixels, verbose=0).shape == (1, 1)

    # Every figure has its interval, from a bootstrap over the test photos.
    bounds = metrics["intervals"]
    assert bounds["photos"] == metrics["test_examples"] and bounds["confidence"] == 0.95
    for key in ("accuracy", "macro_f1"):
        assert bounds[key][0] <= metrics[key] <= bounds[key][1]
    assert set(bounds["per_class"]["Circle"]) == {"precision", "recall", "f1"}
    # The temperature is fitted on validation, stored in the model, and measured on test.
    from model.calibration import temperature_of

    found = metrics["calibration"]
    assert temperature_of(reloaded) == pytest.approx(found["temperature"], rel=1e-4)
    assert found["fitted_on"] == "validation" and found["ece_after"] is not None
    assert (tmp_path / "model" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # The holdout slice: the share of test photos the gate never scores.
    assert 0 < metrics["holdout"]["test_examples"] < metrics["test_examples"]


def test_training_refuses_an_empty_test_split(tmp_path):
    from model.train import TrainConfig, train

    table = make_crops(tmp_path)
    table.loc[table.Split == "test", "Split"] = "train"
    with pytest.raises(ValueError, match="test split is empty"):
        train(table, tmp_path, tmp_path / "m",
              TrainConfig(architecture="seed-cnn", image_size=32, epochs=1))


def test_probabilities_and_top_k():
    probs = probabilities(np.array([[0.8], [0.1]]), 2)
    np.testing.assert_allclose(probs, [[0.2, 0.8], [0.9, 0.1]])
    assert top_k(probs[0], ["a", "b"], 1) == [{"label": "b", "probability": 0.8}]


def test_metrics_are_computed_per_class():
    truth = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    metrics = classification_metrics(truth, probs, ["a", "b"])
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[1, 1], [0, 2]]
    assert metrics["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667,
                                         "support": 2}


def test_roc_auc_ranks_with_ties():
    from model.evaluate import roc_auc

    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    three = classification_metrics(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])
    assert three["roc_auc"] == 1.0 and three["roc_auc_kind"] == "one-vs-rest macro"
