"""Checks both demo judges (the digits classifier, the shape classifier) pass: training is
deterministic and leaves global state alone, and the :mod:`diffkit.demos.judge_cache` entry is
read back without retraining, keyed by the training config, and retrained whole when damaged."""

from __future__ import annotations

import dataclasses
import json
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from diffkit.demos import judge_cache


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@dataclasses.dataclass(frozen=True)
class CachedJudge:
    """A judge network cached by :func:`diffkit.demos.judge_cache.load_or_train`, and the checks it passes."""

    module: types.ModuleType  # the judge's module (its _train is what a cached load must not call)
    stem: str  # the cache entries' file-name stem
    load: Callable[..., torch.nn.Module]  # load_or_train_…(cache_dir=None, **training_config)
    train: Callable[..., torch.nn.Module]  # train_…(seed=…, steps=…)
    quick_steps: int  # for cache-mechanics checks, where the accuracy does not matter

    def check_training_is_deterministic(self, steps: int) -> torch.nn.Module:
        """The weights depend on the seed only, the global RNG and thread count are left alone; returns seed 3's."""
        rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
        first = self.train(seed=3, steps=steps)
        assert torch.equal(torch.get_rng_state(), rng_before)
        assert torch.get_num_threads() == threads_before
        assert weights_equal(first, self.train(seed=3, steps=steps))
        assert not weights_equal(first, self.train(seed=4, steps=steps))
        return first

    def check_second_load_reads_the_cache(self, cache_dir: Path, trained: torch.nn.Module, monkeypatch) -> None:
        """``trained`` was loaded (and cached) from ``cache_dir``: loading again reads it, fast, and writes nothing."""
        names = entries(cache_dir)
        assert any(n.startswith(f"{self.stem}-") and n.endswith(".safetensors") for n in names)
        assert any(n.startswith(f"{self.stem}-") and n.endswith(".json") for n in names)

        def no_training(*args: Any, **kwargs: Any):
            raise AssertionError("the cached classifier was retrained")

        monkeypatch.setattr(self.module, "_train", no_training)
        start = time.perf_counter()
        again = self.load(cache_dir)
        assert time.perf_counter() - start < 2.0
        assert weights_equal(trained, again) and not again.training
        assert entries(cache_dir) == names

    def check_cache_key_follows_the_training_config(self, folder: Path) -> list[dict]:
        """Two step counts make two entries with their own keys; returns their JSON records."""
        self.load(folder, steps=self.quick_steps)
        self.load(folder, steps=self.quick_steps + 1)
        records = [json.loads((folder / n).read_text()) for n in entries(folder) if n.endswith(".json")]
        assert sorted(r["config"]["steps"] for r in records) == [self.quick_steps, self.quick_steps + 1]
        assert len({r["key"] for r in records}) == 2
        return records

    def check_cache_dir_defaults_to_the_environment(self, folder: Path, monkeypatch) -> None:
        monkeypatch.setenv("DIFFKIT_CACHE", str(folder))
        assert judge_cache.default_cache_dir() == folder
        self.load(steps=self.quick_steps)
        assert any(n.endswith(".safetensors") for n in entries(folder))
        monkeypatch.delenv("DIFFKIT_CACHE")
        assert judge_cache.default_cache_dir().parts[-2:] == (".cache", "diffkit")

    def check_a_damaged_entry_is_retrained(self, folder: Path, damage: str) -> None:
        """``damage``: "truncate_weights", "garbage_json" or "other_save" (the JSON of one save beside the
        weights of another)."""
        first = self.load(folder, steps=self.quick_steps)
        (weights,) = folder.glob("*.safetensors")
        (meta,) = folder.glob("*.json")
        if damage == "truncate_weights":
            weights.write_bytes(weights.read_bytes()[:100])
        elif damage == "garbage_json":
            meta.write_text("{not json")
        else:
            assert damage == "other_save"
            record = json.loads(meta.read_text())
            record["save_id"] = "0" * 32
            meta.write_text(json.dumps(record))
        with pytest.warns(UserWarning, match=f"damaged {self.stem} cache"):
            retrained = self.load(folder, steps=self.quick_steps)
        assert weights_equal(first, retrained)  # same seed, same weights
        # the entry was rewritten whole: the next load reads it without a warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert weights_equal(first, self.load(folder, steps=self.quick_steps))
