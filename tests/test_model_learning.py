"""Learnability on the synthetic sample: real labels beat chance clearly, shuffled ones do not."""

import importlib.util

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                 reason="keras is not installed")]

# Held-out accuracy must clear the majority-class rate by this much (43 test crops, 3 classes:
# 0.25 is about 3.5 standard deviations of a chance classifier's accuracy).
MARGIN = 0.25


def fit(workspace, table, out):
    from flows.openimages.dataset import crops_root
    from model.train import TrainConfig, train

    config = TrainConfig(architecture="seed-cnn", image_size=48, epochs=8, batch_size=32,
                         patience=8, tensorboard=False)
    return train(table, crops_root(workspace / "dataset", table), out, config).metrics


def test_real_labels_beat_chance_and_shuffled_labels_do_not(sample_workspace, tmp_path):
    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    test = table[table.Split == "test"]
    majority = test.Class.value_counts().max() / len(test)
    assert set(table.Class) == {"Hamburger", "Sandwich", "Car"} and len(test) >= 30

    real = fit(sample_workspace, table, tmp_path / "real")
    assert real["accuracy"] >= majority + MARGIN, (real["accuracy"], majority)

    # Same crops and training, but train and validation labels permuted: nothing to learn.
    shuffled = table.copy()
    seen = shuffled.Split != "test"
    rng = np.random.default_rng(0)
    shuffled.loc[seen, "Class"] = rng.permutation(shuffled.loc[seen, "Class"].to_numpy())
    noise = fit(sample_workspace, shuffled, tmp_path / "shuffled")
    assert noise["test_examples"] == real["test_examples"]
    assert noise["accuracy"] < majority + MARGIN, (noise["accuracy"], majority)
    assert real["macro_f1"] > noise["macro_f1"] + 0.2
