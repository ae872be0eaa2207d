"""The digits classifier, its cache, and the accuracy / FID metrics built on it."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from diffkit.demos import judge_cache as cache_module
from diffkit.demos.digits import (
    DigitsClassifier,
    DigitsDataset,
    DigitsTrainingConfig,
    class_accuracy,
    digits_fid,
    load_digits,
    load_or_train_digits_classifier,
    real_baseline_fid,
    train_digits_classifier,
)
from diffkit.demos.digits import judge as digits_module
from diffkit.errors import ConfigError, ShapeError

QUICK_STEPS = 5  # for cache-mechanics tests, where the accuracy does not matter


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("diffkit-cache")


@pytest.fixture(scope="module")
def classifier(cache_dir):
    """The default classifier, trained once for this module into a temporary cache."""
    return load_or_train_digits_classifier(cache_dir)


@pytest.fixture(scope="module")
def test_split():
    return DigitsDataset(split="test", seed=0)


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


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
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    first = train_digits_classifier(seed=3, steps=10)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    assert _weights_equal(first, train_digits_classifier(seed=3, steps=10))
    assert not _weights_equal(first, train_digits_classifier(seed=4, steps=10))


@pytest.mark.parametrize("field", [{"steps": 0}, {"seed": -1}, {"batch_size": 1.5}, {"lr": 0.0}, {"max_shift": True}])
def test_bad_training_config_is_a_config_error(field):
    with pytest.raises(ConfigError, match=next(iter(field))):
        DigitsTrainingConfig(**field)


# -- the cache --------------------------------------------------------------------------------


def _entries(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_second_load_reads_the_cache(classifier, cache_dir, monkeypatch):
    names = _entries(cache_dir)
    assert any(n.endswith(".safetensors") for n in names) and any(n.endswith(".json") for n in names)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(digits_module, "_train", no_training)
    start = time.perf_counter()
    again = load_or_train_digits_classifier(cache_dir)
    assert time.perf_counter() - start < 2.0
    assert _weights_equal(classifier, again) and not again.training
    assert _entries(cache_dir) == names


def test_cache_key_follows_the_training_config(tmp_path):
    load_or_train_digits_classifier(tmp_path, steps=QUICK_STEPS)
    load_or_train_digits_classifier(tmp_path, steps=QUICK_STEPS + 1)
    records = [json.loads((tmp_path / n).read_text()) for n in _entries(tmp_path) if n.endswith(".json")]
    assert sorted(r["config"]["steps"] for r in records) == [QUICK_STEPS, QUICK_STEPS + 1]
    assert len({r["key"] for r in records}) == 2
    assert all(len(r["data_sha256"]) == 64 for r in records)


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFKIT_CACHE", str(tmp_path))
    assert cache_module.default_cache_dir() == tmp_path
    load_or_train_digits_classifier(steps=QUICK_STEPS)
    assert any(n.endswith(".safetensors") for n in _entries(tmp_path))
    monkeypatch.delenv("DIFFKIT_CACHE")
    assert cache_module.default_cache_dir().parts[-2:] == (".cache", "diffkit")


@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_json", "other_save"])
def test_a_damaged_cache_entry_is_retrained(tmp_path, damage):
    first = load_or_train_digits_classifier(tmp_path, steps=QUICK_STEPS)
    (weights,) = tmp_path.glob("*.safetensors")
    (meta,) = tmp_path.glob("*.json")
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage_json":
        meta.write_text("{not json")
    else:  # the JSON of one save beside the weights of another
        record = json.loads(meta.read_text())
        record["save_id"] = "0" * 32
        meta.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="damaged digits-classifier cache"):
        retrained = load_or_train_digits_classifier(tmp_path, steps=QUICK_STEPS)
    assert _weights_equal(first, retrained)  # same seed, same weights
    # the entry was rewritten whole: the next load reads it without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _weights_equal(first, load_or_train_digits_classifier(tmp_path, steps=QUICK_STEPS))


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
