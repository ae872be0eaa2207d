"""The prompt-adherence evaluator for the shapes data: measurements, the shape CNN and its cache."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from diffkit.demos.shapes import ShapeClassifier, ShapesEvaluator, ShapeTrainingConfig
from diffkit.demos.shapes import judge as shapes_metrics
from diffkit.demos.shapes.data import COLORS, POSITIONS, SHAPES, ShapesConfig, ShapesDataset, ShapeSpec, render
from diffkit.errors import ConfigError, ShapeError
from tests.demos.judge_checks import CachedJudge

JUDGE = CachedJudge(shapes_metrics, "shape-classifier", load=shapes_metrics.load_or_train_shape_classifier,
                    train=shapes_metrics.train_shape_classifier, quick_steps=3)


@pytest.fixture(scope="module")
def evaluator(cache_dir):
    """The default evaluator, its classifier trained once for this module into a temporary cache."""
    return ShapesEvaluator(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def heldout():
    """Held-out real images of a data seed the tests use nowhere else (textured, jittered)."""
    return ShapesDataset(ShapesConfig(seed=1), "heldout")


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of σ pixels over H and W with SciPy (an implementation independent of diffkit's)."""
    return torch.from_numpy(gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest"))


# -- accuracy on real images -------------------------------------------------------------------


def test_accuracy_on_heldout_real_images(evaluator, heldout):
    scores = evaluator.score(heldout.images, heldout.specs)
    assert scores["color_accuracy"] >= 0.98
    assert scores["position_accuracy"] >= 0.98
    assert scores["shape_accuracy"] >= 0.95
    assert scores["size_accuracy"] >= 0.95  # every heldout spec names its size
    assert scores["joint_accuracy"] >= 0.93


@pytest.mark.parametrize("sigma", [0.7, 1.0])
def test_accuracy_survives_a_mild_blur(evaluator, heldout, sigma):
    # what a slightly blurry autoencoder does to the images
    scores = evaluator.score(_blur(heldout.images, sigma), heldout.specs)
    assert scores["color_accuracy"] >= 0.97
    assert scores["position_accuracy"] >= 0.97
    assert scores["shape_accuracy"] >= 0.9


def test_accuracy_survives_down_and_up_sampling(evaluator, heldout):
    # a 4× smaller grid and back (a latent's resolution), then light noise
    small = F.interpolate(heldout.images, scale_factor=0.25, mode="area")
    restored = F.interpolate(small, scale_factor=4, mode="bilinear", align_corners=False)
    noisy = (restored + 0.03 * torch.randn(restored.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    scores = evaluator.score(noisy, heldout.specs)
    assert scores["color_accuracy"] >= 0.95 and scores["position_accuracy"] >= 0.95
    assert scores["shape_accuracy"] >= 0.7  # 32→8 px leaves a small object only a few pixels


def test_other_image_sizes_are_resized(evaluator):
    big = ShapesDataset(ShapesConfig(image_size=64, jitter=4.0, texture=0.0, seed=2, heldout_count=96), "heldout")
    scores = evaluator.score(big.images, big.specs)
    assert min(scores[k] for k in ("color_accuracy", "shape_accuracy", "position_accuracy")) >= 0.95


def test_colour_drift_and_dim_objects_keep_their_colour(evaluator, heldout):
    # a darker, shifted rendition: b + 0.75·(x − b) (the object fades towards the background)
    # plus a uniform +0.05 on every channel; the palette colour is still the nearest ray
    background = heldout.images[:, :, :1, :1]
    faded = (background + 0.75 * (heldout.images - background) + 0.05).clamp(-1, 1)
    assert evaluator.score(faded, heldout.specs)["color_accuracy"] >= 0.98


def test_uniform_noise_scores_near_chance(evaluator):
    n = 600
    noise = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # balanced targets: the predictions do not depend on them, so each accuracy's expectation
    # is 1 / (number of values) whatever the evaluator predicts on noise
    colors, positions = list(COLORS), list(POSITIONS)
    specs = [ShapeSpec(SHAPES[i % 3], colors[(i // 3) % 6], positions[(i // 18) % 5]) for i in range(n)]
    scores = evaluator.score(noise, specs)
    assert abs(scores["color_accuracy"] - 1 / len(COLORS)) < 0.08
    assert abs(scores["shape_accuracy"] - 1 / len(SHAPES)) < 0.08
    assert abs(scores["position_accuracy"] - 1 / len(POSITIONS)) < 0.08
    assert "size_accuracy" not in scores  # no spec named a size


def test_blank_images_show_nothing(evaluator):
    blank = torch.full((3, 3, 32, 32), -0.5)
    blank[1] = 0.3
    assert evaluator.predict(blank) == [{"color": None, "shape": None, "position": None, "size": None}] * 3
    scores = evaluator.score(blank, [ShapeSpec("circle", "red", "left")] * 3)
    assert scores["color_accuracy"] == scores["shape_accuracy"] == scores["position_accuracy"] == 0.0


def test_predictions_agree_with_score(evaluator, heldout):
    predicted = evaluator.predict(heldout.images[:60])
    assert all(set(p) == {"color", "shape", "position", "size"} for p in predicted)
    specs = [ShapeSpec(p["shape"], p["color"], p["position"], p["size"]) for p in predicted]
    scores = evaluator.score(heldout.images[:60], specs)
    assert all(v == 1.0 for v in scores.values())
    wrong = [ShapeSpec(s.shape, s.color, "center" if s.position != "center" else "left") for s in specs]
    assert evaluator.score(heldout.images[:60], wrong)["position_accuracy"] == 0.0


def test_measured_centroid_moves_with_the_object():
    rng = np.random.default_rng(0)
    base = ShapeSpec("circle", "green", "center", "small")
    image = torch.from_numpy(render(base, 32, rng)).permute(2, 0, 1)[None].float() / 127.5 - 1
    shifted = torch.roll(image, shifts=(3, -2), dims=(2, 3))  # 3 px down, 2 px left
    a, b = shapes_metrics.measure(image)["centroid"][0], shapes_metrics.measure(shifted)["centroid"][0]
    torch.testing.assert_close(b - a, torch.tensor([-2 / 32, 3 / 32]), atol=1e-4, rtol=0)
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5]), atol=1e-4, rtol=0)


def test_score_input_checks(evaluator):
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ShapeError, match="specs"):
        evaluator.score(images, [ShapeSpec("circle", "red", "left")])
    with pytest.raises(ConfigError, match="ShapeSpec"):
        evaluator.score(images, [("circle", "red", "left")] * 2)
    with pytest.raises(ShapeError, match=r"\[N, 3, H, W\]"):
        evaluator.predict(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="batch_size"):
        evaluator.predict(images, batch_size=0)


# -- the network and its training -----------------------------------------------------------------


def test_classifier_output_and_input_checks():
    net = ShapeClassifier().eval()
    assert net(torch.rand(4, 3, 32, 32) * 2 - 1).shape == (4, len(SHAPES))
    assert net(torch.rand(2, 3, 48, 40) * 2 - 1).shape == (2, len(SHAPES))
    with pytest.raises(ShapeError, match=r"\[N, 3, H, W\]"):
        net(torch.zeros(2, 32, 32))


def test_foreground_map_ignores_colour_and_background_tone():
    spec_red, spec_blue = ShapeSpec("square", "red", "top", "large"), ShapeSpec("square", "blue", "top", "large")
    images = [
        torch.from_numpy(render(s, 32, np.random.default_rng(0))).permute(2, 0, 1).float() / 127.5 - 1
        for s in (spec_red, spec_blue)
    ]
    maps = shapes_metrics.foreground_map(torch.stack(images))
    assert maps.shape == (2, 1, 32, 32) and maps.min() >= 0 and maps.max() == 1
    # both maps are 1 on the object's interior and 0 on the background; only the rim differs
    interior = (maps[0] == 1) & (maps[1] == 1)
    assert interior.sum() >= 100 and ((maps[0] == 0) == (maps[1] == 0)).all()


def test_training_is_deterministic_and_leaves_global_state_alone():
    assert not JUDGE.check_training_is_deterministic(steps=JUDGE.quick_steps).training


@pytest.mark.parametrize("field", [{"steps": 0}, {"seed": -1}, {"lr": 0.0}, {"max_blur": -1.0}, {"batch_size": True}])
def test_bad_training_config_is_a_config_error(field):
    with pytest.raises(ConfigError, match=next(iter(field))):
        ShapeTrainingConfig(**field)


def test_training_blur_matches_scipy():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = shapes_metrics._gaussian_blur(images, torch.tensor([0.0, 0.6, 1.0]))
    torch.testing.assert_close(blurred[0], images[0], atol=1e-6, rtol=0)  # σ → 0: the identity
    for i, sigma in ((1, 0.6), (2, 1.0)):
        # truncate=3/σ keeps SciPy's kernel to the same ±3 pixels
        expected = gaussian_filter(images[i].numpy(), sigma=(0, sigma, sigma), mode="nearest", truncate=3 / sigma)
        torch.testing.assert_close(blurred[i], torch.from_numpy(expected), atol=1e-5, rtol=0)


# -- the cache --------------------------------------------------------------------------------------


def test_second_load_reads_the_cache(evaluator, cache_dir, monkeypatch):
    JUDGE.check_second_load_reads_the_cache(cache_dir, evaluator.classifier, monkeypatch)


def test_cache_key_follows_the_training_config(tmp_path):
    records = JUDGE.check_cache_key_follows_the_training_config(tmp_path)
    assert all(r["generator"]["shapes"] == list(SHAPES) for r in records)


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    JUDGE.check_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch)


@pytest.mark.parametrize("damage", ["truncate_weights", "other_save"])
def test_a_damaged_cache_entry_is_retrained(tmp_path, damage):
    JUDGE.check_a_damaged_entry_is_retrained(tmp_path, damage)


def test_every_palette_colour_and_position_is_measured(evaluator):
    # one clean large circle of every colour at every position
    specs = [ShapeSpec("circle", c, p, "large") for c, p in itertools.product(COLORS, POSITIONS)]
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(render(s, 32, rng)).permute(2, 0, 1) for s in specs]).float() / 127.5 - 1
    predicted = evaluator.predict(images)
    assert [(p["color"], p["position"]) for p in predicted] == [(s.color, s.position) for s in specs]
