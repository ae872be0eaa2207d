"""The digits classifier, its cache, and the accuracy / FID metrics built on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffkit.demos.digits import DigitsClassifier, DigitsTrainingConfig, class_accuracy, digits_fid, real_baseline_fid
from diffkit.demos.digits import judge as digits_module
from diffkit.demos.digits.data import DigitsDataset, load_digits
from diffkit.errors import ConfigError, ShapeError
from tests.demos.judge_checks import CachedJudge

JUDGE = CachedJudge(digits_module, "digits-classifier", load=digits_module.load_or_train_digits_classifier,
                    train=digits_module.train_digits_classifier, quick_steps=5)


@pytest.fixture(scope="module")
def classifier(cache_dir):
    """The default classifier, trained once for this module into a temporary cache."""
    return JUDGE.load(cache_dir)


@pytest.fixture(scope="module")
def test_split():
    return DigitsDataset(split="test", seed=0)


# -- the network ------------------------------------------------------------------------------


def test_output_shapes():
    net = DigitsClassifier()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert net(x).shape == (3, 10)
    assert net.features(x).shape == (3, 128)
    assert (net.features(x) >= 0).all()  # post-ReLU features


def test_larger_inputs_are_average_pooled_to_8x8():
    net = DigitsClassifier().eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    pooled = x.reshape(2, 1, 8, 4, 8, 4).mean(dim=(3, 5))  # 4×4 block means
    torch.testing.assert_close(net(x), net(pooled))


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 3, 8, 8), (2, 1, 4, 4)])
def test_bad_input_shapes_are_shape_errors(shape):
    with pytest.raises(ShapeError, match=r"\[B, 1, H, W\]"):
        DigitsClassifier()(torch.zeros(shape))


# -- training ---------------------------------------------------------------------------------


def test_held_out_accuracy(classifier, test_split):
    # the test split was never seen in training (tests/demos/digits/test_data.py checks it is disjoint from train)
    assert not classifier.training
    assert class_accuracy(classifier, test_split.images, test_split.labels) >= 0.95


def test_held_out_accuracy_on_resized_digits(classifier):
    big = DigitsDataset(size=32, split="test", seed=0)
    assert class_accuracy(classifier, big.images, big.labels) >= 0.9


def test_training_is_deterministic_and_leaves_global_state_alone():
    JUDGE.check_training_is_deterministic(steps=10)


@pytest.mark.parametrize("field", [{"steps": 0}, {"seed": -1}, {"batch_size": 1.5}, {"lr": 0.0}, {"max_shift": True}])
def test_bad_training_config_is_a_config_error(field):
    with pytest.raises(ConfigError, match=next(iter(field))):
        DigitsTrainingConfig(**field)


# -- the cache --------------------------------------------------------------------------------


def test_second_load_reads_the_cache(classifier, cache_dir, monkeypatch):
    JUDGE.check_second_load_reads_the_cache(cache_dir, classifier, monkeypatch)


def test_cache_key_follows_the_training_config(tmp_path):
    records = JUDGE.check_cache_key_follows_the_training_config(tmp_path)
    assert all(len(r["data_sha256"]) == 64 for r in records)


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    JUDGE.check_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch)


@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_json", "other_save"])
def test_a_damaged_cache_entry_is_retrained(tmp_path, damage):
    JUDGE.check_a_damaged_entry_is_retrained(tmp_path, damage)


# -- the metrics ------------------------------------------------------------------------------


def test_uniform_noise_is_classified_at_chance(classifier):
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(1000, 1, 8, 8, generator=generator) * 2 - 1
    balanced = torch.arange(1000) % 10  # predictions do not depend on labels: expected 10 %
    assert abs(class_accuracy(classifier, noise, balanced) - 0.1) < 0.06


def test_class_accuracy_counts_agreements(classifier, test_split):
    predicted = classifier(test_split.images).argmax(1)
    assert class_accuracy(classifier, test_split.images, predicted) == 1.0
    assert class_accuracy(classifier, test_split.images, (predicted + 1) % 10) == 0.0


def test_class_accuracy_shape_mismatch(classifier):
    with pytest.raises(ShapeError, match="labels"):
        class_accuracy(classifier, torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.int64))


def test_fid_grows_with_the_corruption(classifier):
    images, _ = load_digits()
    generator = torch.Generator().manual_seed(1)
    order = torch.randperm(1797, generator=generator)
    reference, real = images[order[:400]], images[order[400:800]]
    noise = torch.rand(400, 1, 8, 8, generator=generator) * 2 - 1
    baseline = real_baseline_fid(classifier, 400, seed=0)
    fid_real = digits_fid(classifier, real, reference)
    fid_noise = digits_fid(classifier, noise, reference)
    assert 0 < baseline < 10 * baseline < fid_noise
    assert 0 < fid_real < 10 * fid_real < fid_noise
    # additive Gaussian noise of growing σ (clipped to [−1, 1])
    jitter = torch.randn(real.shape, generator=generator)
    noisy = [digits_fid(classifier, (real + s * jitter).clamp(-1, 1), reference) for s in (0.25, 0.5, 1.0)]
    assert fid_real < noisy[0] < noisy[1] < noisy[2] < fid_noise
    # a growing share of the sample replaced by uniform noise
    mixed = [digits_fid(classifier, torch.cat([real[k:], noise[:k]]), reference) for k in (100, 200, 300)]
    assert fid_real < mixed[0] < mixed[1] < mixed[2] < fid_noise


def test_fid_of_different_sizes_goes_through_the_classifier_resize(classifier):
    small, _ = load_digits(8)
    big, _ = load_digits(32)
    pooled = F.adaptive_avg_pool2d(big[:300], 8)
    assert digits_fid(classifier, big[:300], small[300:600]) == pytest.approx(
        digits_fid(classifier, pooled, small[300:600]), rel=1e-5
    )


def test_real_baseline_is_deterministic_and_validated(classifier):
    assert real_baseline_fid(classifier, 100, seed=2) == real_baseline_fid(classifier, 100, seed=2)
    assert real_baseline_fid(classifier, 100, seed=2) != real_baseline_fid(classifier, 100, seed=3)
    assert real_baseline_fid(classifier, 100, seed=2, size=32) > 0
    for bad in (1, 899, 10.0):
        with pytest.raises(ConfigError, match="n must be"):
            real_baseline_fid(classifier, bad)
