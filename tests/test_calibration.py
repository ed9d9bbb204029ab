"""Temperature scaling: fitted on validation, stored inside the saved model, measured by ECE."""

import numpy as np
import pytest

from model import calibration


def overconfident(n=600, seed=0):
    """Logits whose softmax is far surer than the labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.0, (n, 3))
    probs = calibration.probabilities(true_logits)
    truth = np.array([rng.choice(3, p=p) for p in probs])
    return true_logits * 4.0, truth  # four times too sharp


def test_the_temperature_undoes_overconfidence_and_lowers_ece():
    logits, truth = overconfident()
    temperature = calibration.fit_temperature(logits, truth)
    assert 3.0 < temperature < 5.5
    before = calibration.reliability(calibration.probabilities(logits), truth)
    after = calibration.reliability(calibration.probabilities(logits, temperature), truth)
    assert after["ece"] < before["ece"] / 2
    assert sum(row["crops"] for row in after["bins"]) == len(truth)
    # Scaling keeps every argmax: accuracy cannot change.
    assert (calibration.probabilities(logits, temperature).argmax(1) == logits.argmax(1)).all()


def test_a_perfectly_separated_validation_split_pins_no_temperature():
    logits, _ = overconfident()
    truth = logits.argmax(1)  # every validation crop right: sharper always fits better
    assert calibration.fit_temperature(logits, truth) is None
    assert calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) is None


def test_one_sigmoid_unit_is_calibrated_as_two_classes():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (400, 1))
    truth = (rng.uniform(size=400) < 1 / (1 + np.exp(-z[:, 0]))).astype(int)
    assert 2.0 < calibration.fit_temperature(z * 3, truth) < 4.5
    assert calibration.probabilities(z).shape == (400, 2)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_temperature_is_inside_the_saved_model(tmp_path, classes):
    import keras

    from model.architectures import seed_cnn

    model = seed_cnn(32, classes, seed=3)
    pixels = np.random.default_rng(2).uniform(0, 255, (4, 20, 20, 3)).astype("float32")
    logits = calibration.logits_model(model)
    raw = np.asarray(logits.predict(pixels, verbose=0))
    np.testing.assert_allclose(calibration.probabilities(raw)[:, -1],
                               np.asarray(model.predict(pixels, verbose=0))[:, -1], atol=1e-5)
    calibrated = calibration.with_temperature(logits, 2.5)
    calibrated.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert calibration.temperature_of(loaded) == pytest.approx(2.5)
    out = np.asarray(loaded.predict(pixels, verbose=0))
    np.testing.assert_allclose(out[:, -1], calibration.probabilities(raw, 2.5)[:, -1],
                               atol=1e-5)
    assert loaded.get_layer("resize") is not None  # preprocessing stays inside


def test_reliability_chart_is_drawn(tmp_path):
    from model.report import reliability_chart

    logits, truth = overconfident(200)
    before = calibration.reliability(calibration.probabilities(logits), truth)
    after = calibration.reliability(calibration.probabilities(logits, 4.0), truth)
    dest = reliability_chart(before, after, 4.0, tmp_path / "reliability.png")
    assert dest.read_bytes()[:4] == b"\x89PNG"
