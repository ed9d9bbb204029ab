"""The transfer model: Keras Applications backbones without downloads (weights none or local)."""

import importlib.util

import numpy as np
import pytest
from test_model import make_crops

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                 reason="keras is not installed")]


def test_backbones_take_raw_pixels_and_rescale_them_once():
    import keras

    from model.architectures import transfer

    for name in ("MobileNetV3Small", "EfficientNetB0"):
        model = transfer(32, 3, backbone_name=name, weights=None)
        # The backbone brings its own scaling of 0..255 input; nothing rescales before it.
        outer = [layer.name for layer in model.layers]
        assert outer[:3] == ["pixels", "resize", "backbone"]
        assert not any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
        inner = model.get_layer("backbone").layers
        assert isinstance(inner[1], keras.layers.Rescaling)
        x = np.full((1, 40, 50, 3), 255.0, dtype="float32")
        assert model.predict(x, verbose=0).shape == (1, 3)


def test_weights_none_and_bad_inputs():
    from model.architectures import resolve_weights, transfer

    assert resolve_weights("none") is None and resolve_weights(None) is None
    assert resolve_weights("imagenet") == "imagenet"
    with pytest.raises(FileNotFoundError):
        resolve_weights("/nonexistent/backbone.weights.h5")
    with pytest.raises(ValueError, match="at least 32"):
        transfer(24, 2, weights=None)
    scratch = transfer(32, 2, weights=None)
    assert scratch.get_layer("backbone").trainable  # no pretrained weights: all of it trains


def test_transfer_training_from_scratch(tmp_path):
    import keras

    from model.train import TrainConfig, train

    table = make_crops(tmp_path / "crops", per_class=12)
    result = train(table, tmp_path / "crops", tmp_path / "model",
                   TrainConfig(architecture="transfer", weights=None, image_size=32, epochs=1,
                               batch_size=8, tensorboard=False))
    assert result.metrics["weights"] is None and result.metrics["epochs_run"] == 1
    reloaded = keras.saving.load_model(result.model_path, compile=False)
    assert reloaded.predict(np.zeros((1, 37, 41, 3)), verbose=0).shape == (1, 1)


def test_local_weights_file_loads_then_fine_tunes(tmp_path):
    import keras

    from model.architectures import transfer
    from model.train import TrainConfig, train

    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, pooling="avg",
                                                 input_shape=(32, 32, 3))
    weights_file = tmp_path / "backbone.weights.h5"
    source.save_weights(weights_file)

    model = transfer(32, 2, weights=str(weights_file))
    backbone = model.get_layer("backbone")
    assert not backbone.trainable  # pretrained: the head trains first
    for mine, theirs in zip(backbone.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)

    table = make_crops(tmp_path / "crops", per_class=12)
    result = train(table, tmp_path / "crops", tmp_path / "model",
                   TrainConfig(architecture="transfer", weights=str(weights_file), image_size=32,
                               epochs=1, batch_size=8, fine_tune_layers=10, fine_tune_epochs=1,
                               tensorboard=False))
    assert result.metrics["head_epochs"] == 1 and result.metrics["epochs_run"] == 2
    assert result.metrics["fine_tuned_layers"] > 0
    assert result.metrics["fine_tune_kept"] in (True, False)  # else the head's weights return
    assert len(result.metrics["weights_sha256"]) == 64
    tuned = result.model.get_layer("backbone")
    assert any(layer.trainable for layer in tuned.layers)
    assert not any(layer.trainable for layer in tuned.layers
                   if isinstance(layer, keras.layers.BatchNormalization))


@pytest.mark.parametrize("name", ["MobileNetV3Small", "EfficientNetB0"])
def test_the_weights_check_names_the_file_keras_fetches(name, monkeypatch):
    # What model.pretrained checks before training must be what Keras then downloads.
    from keras.src.utils import file_utils

    from model.architectures import backbone
    from model.pretrained import IMAGENET_FILES, weights_url

    asked = []

    def fetch(fname, origin, **kwargs):
        asked.append((fname, origin, kwargs.get("cache_subdir")))
        raise RuntimeError("no download in tests")

    monkeypatch.setattr(file_utils, "get_file", fetch)
    with pytest.raises(RuntimeError, match="no download in tests"):
        backbone(name, 32, "imagenet")
    assert asked == [(IMAGENET_FILES[name][1], weights_url(name), "models")]
