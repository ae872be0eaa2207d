"""The case table: every bad input and fault the reliability tally tries, one ``case(...)`` each.

Conventions: each case runs in its own empty folder, which is also the working directory, so
paths are relative (``R`` a run folder, ``P`` a pipeline folder, ``s.png`` an output).
``ctx.run_copy()`` copies the shared tiny run (``diffkit train --recipe digits --steps 4``,
checkpoints at steps 2 and 4, finished) to ``R``; ``ctx.pipe_copy()`` its pipeline to ``P``.
A command given as a list runs in-process as ``diffkit.cli.commands.main(argv)``.

Nothing here imports torch at module level: the parent process only needs the names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import struct
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.reliability.harness import ALL, TINY_BASE, Case, CaseHang, CliResult, Ctx, SetupError

TRAIN = "train arguments"
RUNS = "run folders"
RECORDS = "checkpoints and run records"
SAMPLE = "sample command"
PIPE = "pipeline folders"
API = "python api"
NONFINITE = "non-finite values"
CLI = "cli"
CATEGORIES = (TRAIN, RUNS, RECORDS, SAMPLE, PIPE, API, NONFINITE, CLI)

CASES: list[Case] = []


def case(name: str, category: str, what: str, action: Sequence[str] | Callable[[Ctx], Any], **options: Any) -> None:
    """Add one case to the table."""
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate reliability case {name!r}")
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    CASES.append(Case(name=name, category=category, what=what, action=action, **options))


# -- building blocks --------------------------------------------------------------------------------


_VALUE_FLAGS = frozenset({"--backbone", "--sampler", "--recipe", "--steps", "--out"})


def train(*extra: str, out: str = "R", steps: int | str | None = 4, recipe: str | None = "digits") -> list[str]:
    """``diffkit train`` with the tiny run's overrides, then ``extra`` (flags first; later overrides win)."""
    argv = ["train", "--out", out, "--no-progress"]
    if recipe is not None:
        argv += ["--recipe", recipe]
    if steps is not None:
        argv += ["--steps", str(steps)]
    flags: list[str] = []
    overrides: list[str] = []
    items = list(extra)
    while items:
        item = items.pop(0)
        if item.startswith("--"):
            flags.append(item)
            if item in _VALUE_FLAGS and items:
                flags.append(items.pop(0))
        else:
            overrides.append(item)
    return [*argv, *flags, *TINY_BASE, *overrides]


def resume(*extra: str, steps: int | None = 6, out: str = "R") -> list[str]:
    """``diffkit train --resume`` of ``R`` (default: extended to 6 steps, so checkpoints are read)."""
    return train("--resume", *extra, out=out, steps=steps)


def sample(*extra: str, src: str = "R", out: str = "s.png") -> list[str]:
    """``diffkit sample`` of 4 images in 2 steps; ``extra`` comes last (argparse: the last value wins)."""
    return ["sample", "--from", src, "--out", out, "--n", "4", "--steps", "2", *extra]


def run(name: str = "R") -> Callable[[Ctx], None]:
    return lambda ctx: ctx.run_copy(name)


def pipe(name: str = "P") -> Callable[[Ctx], None]:
    return lambda ctx: ctx.pipe_copy(name)


def chain(*steps: Callable[[Ctx], Any]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for step in steps:
            step(ctx)

    return setup


def write(path: str, data: str | bytes) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        target = ctx.tmp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")

    return setup


def remove(path: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        import shutil

        target = ctx.tmp / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    return setup


def fifo(path: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        target = ctx.tmp / path
        if target.exists() or target.is_symlink():
            target.unlink()
        os.mkfifo(target)

    return setup


def truncate(path: str, keep: float = 0.5) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        target = ctx.tmp / path
        data = target.read_bytes()
        target.write_bytes(data[: int(len(data) * keep)])

    return setup


def json_edit(path: str, edit: Callable[[Any], Any]) -> Callable[[Ctx], None]:
    """Rewrite a JSON file with ``edit(data)`` (its return value, or the edited data when None)."""

    def setup(ctx: Ctx) -> None:
        target = ctx.tmp / path
        data = json.loads(target.read_text(encoding="utf-8"))
        new = edit(data)
        target.write_text(json.dumps(data if new is None else new, indent=2), encoding="utf-8")

    return setup


def json_set(path: str, dotted: str | tuple[str, ...], value: Any) -> Callable[[Ctx], None]:
    """Set a key (``"a.b"``, or a tuple of keys when one holds a dot) in a JSON file."""

    def edit(data: Any) -> None:
        *parents, last = dotted.split(".") if isinstance(dotted, str) else dotted
        node = data
        for part in parents:
            node = node[part]
        node[last] = value

    return json_edit(path, edit)


def json_del(path: str, dotted: str) -> Callable[[Ctx], None]:
    def edit(data: Any) -> None:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]

    return json_edit(path, edit)


def mkdir(path: str, mode: int | None = None) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / path).mkdir(parents=True, exist_ok=True)
        if mode is not None:
            os.chmod(ctx.tmp / path, mode)

    return setup


def symlink(path: str, target: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        link = ctx.tmp / path
        if link.is_dir() and not link.is_symlink():
            import shutil

            shutil.rmtree(link)
        elif link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(target, link)

    return setup


def copy(source: str, target: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        import shutil

        src, dst = ctx.tmp / source, ctx.tmp / target
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)

    return setup


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(folder: str) -> Callable[[Ctx], None]:
    """Recompute a checkpoint's manifest: a damage an attacker (or a bug) made consistent."""

    def setup(ctx: Ctx) -> None:
        root = ctx.tmp / folder
        meta = json.loads((root / "meta.json").read_text())
        for name in meta["files"]:
            path = root / name
            meta["files"][name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        (root / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    return setup


def tensors(path: str, edit: Callable[[dict[str, Any]], Any]) -> Callable[[Ctx], None]:
    """Rewrite a safetensors file through ``edit(tensors)`` (in place), keeping its metadata."""

    def setup(ctx: Ctx) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        target = ctx.tmp / path
        with safe_open(str(target), framework="pt") as handle:
            metadata = handle.metadata()
            values = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        result = edit(values)
        save_file(result if isinstance(result, dict) else values, str(target), metadata=metadata)

    return setup


def _first_float(values: dict[str, Any]) -> str:
    return next(k for k in sorted(values) if values[k].is_floating_point() and values[k].numel() > 1)


def poke(value: float) -> Callable[[dict[str, Any]], None]:
    """Set one element of the first floating tensor to ``value`` (NaN, inf)."""

    def edit(values: dict[str, Any]) -> None:
        key = _first_float(values)
        t = values[key].clone()
        t.view(-1)[0] = value
        values[key] = t

    return edit


def retype(dtype_name: str) -> Callable[[dict[str, Any]], None]:
    def edit(values: dict[str, Any]) -> None:
        import torch

        key = _first_float(values)
        values[key] = values[key].to(getattr(torch, dtype_name))

    return edit


def safetensors_bytes(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def garbage(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class PicklePayload:
    """Unpickling this runs ``touch PWNED`` (what a hostile ``state.pt`` would do)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


def pickle_payload(path: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        import torch

        torch.save({"step": 4, "payload": PicklePayload()}, ctx.tmp / path)

    return setup


def no_pwned(ctx: Ctx, value: Any) -> str | None:
    return "the pickle payload ran (PWNED exists)" if (ctx.tmp / "PWNED").exists() else None


def absent(*paths: str) -> Callable[[Ctx, Any], str | None]:
    def post(ctx: Ctx, value: Any) -> str | None:
        there = [p for p in paths if (ctx.tmp / p).exists()]
        return f"{', '.join(there)} written although the command failed" if there and _failed(value) else None

    return post


def _failed(value: Any) -> bool:
    return not (isinstance(value, CliResult) and value.code == 0)


# -- verification of successes --------------------------------------------------------------------------


def non_finite_weights(folder: Path) -> str | None:
    """What is non-finite or non-floating in the safetensors files under ``folder``, if anything."""
    import torch
    from safetensors.torch import load_file

    for file in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            if not value.is_floating_point():
                return f"{file.relative_to(folder)}:{key} is {value.dtype}"
            if not bool(torch.isfinite(value).all()):
                return f"{file.relative_to(folder)}:{key} holds NaN or inf"
    return None


def finished_at(step: int, out: str = "R", warns: str | None = None) -> Callable[[Ctx, Any], str | None]:
    """The run in ``out`` is complete at ``step``: record, intact newest checkpoint, finite pipeline."""

    def verify(ctx: Ctx, value: Any) -> str | None:
        from diffkit.training.checkpoints import list_checkpoints, verify_checkpoint

        folder = ctx.tmp / out
        record = json.loads((folder / "run.json").read_text())
        if record.get("finished_step") != step:
            return f"run.json records finished_step {record.get('finished_step')!r}, not {step}"
        found = list_checkpoints(folder / "checkpoints")
        if not found or found[-1].name != f"step-{step:09d}":
            return f"the newest checkpoint is {found[-1].name if found else 'missing'}, not step {step}"
        verify_checkpoint(found[-1])
        if not (folder / "pipeline" / "pipeline.json").is_file():
            return "no pipeline/ was written"
        problem = non_finite_weights(folder / "pipeline")
        if problem:
            return f"the saved pipeline is damaged: {problem}"
        if warns is not None and isinstance(value, CliResult) and warns not in value.stderr:
            return f"no warning naming {warns} on stderr ({value.stderr.strip()[-300:]!r})"
        return None

    return verify


def new_run(out: str = "R", step: int = 4) -> Callable[[Ctx, Any], str | None]:
    """A fresh run replaced the shared one: a new run id, complete at ``step``."""
    finished = finished_at(step, out)

    def verify(ctx: Ctx, value: Any) -> str | None:
        old = json.loads((ctx.base / "run.json").read_text())["run_id"]
        now = json.loads((ctx.tmp / out / "run.json").read_text())["run_id"]
        if old == now:
            return "the run id is the earlier run's: the folder was not started afresh"
        return finished(ctx, value)

    return verify


def png_ok(path: str = "s.png") -> Callable[[Ctx, Any], str | None]:
    def verify(ctx: Ctx, value: Any) -> str | None:
        import numpy as np
        from PIL import Image

        target = ctx.tmp / path
        if not target.is_file():
            return f"{path} was not written"
        with Image.open(target) as image:
            picture = np.asarray(image)
        if picture.size == 0 or picture.min() == picture.max():
            return f"{path} is one flat colour (non-finite or empty samples?)"
        return None

    return verify


def finite_tensor(shape: tuple[int, ...] | None = None, dtype: str | None = None) -> Callable[[Ctx, Any], str | None]:
    def verify(ctx: Ctx, value: Any) -> str | None:
        import torch

        if not isinstance(value, torch.Tensor):
            return f"returned {type(value).__name__}, not a tensor"
        if shape is not None and tuple(value.shape) != shape:
            return f"returned shape {tuple(value.shape)}, expected {shape}"
        if dtype is not None and str(value.dtype) != f"torch.{dtype}":
            return f"returned dtype {value.dtype}, expected torch.{dtype}"
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            return f"returned non-finite or non-floating values ({value.dtype})"
        return None

    return verify


# -- shared objects for the Python API cases -------------------------------------------------------------

TINY_UNET = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [32, 64], "layers_per_block": 1,
    "attention_levels": [], "mid_attention": False, "num_classes": 10, "norm_groups": 8,
}


def load_base_pipeline(ctx: Ctx) -> Any:
    import diffkit

    return diffkit.load_pretrained(ctx.base / "pipeline")


def _labels(*values: Any) -> Callable[[], Any]:
    def make() -> Any:
        import torch

        return torch.tensor(values)

    return make


def pipeline_sample(**kwargs: Any) -> Callable[[Ctx], Any]:
    """``Pipeline.sample`` of the shared run's class-conditioned pipeline with ``kwargs``.

    Defaults: n=2, steps=2, generator=0 and one valid class label per sample, so that only the
    value under test is wrong.
    """

    def action(ctx: Ctx) -> Any:
        import torch

        args = {"n": 2, "steps": 2, "generator": 0, **kwargs}
        n = args.pop("n")
        if "cond" not in args:
            count = n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 10**8 else 2
            args["cond"] = torch.arange(count) % 10
        elif callable(args["cond"]):
            args["cond"] = args["cond"]()
        return load_base_pipeline(ctx).sample(n, **args)

    return action


def zero_denoiser(x: Any, sigma: Any, cond: Any = None) -> Any:
    return x * 0


def diffkit_sample(**kwargs: Any) -> Callable[[Ctx], Any]:
    """``diffkit.sample`` of a zero denoiser, shape (2, 1, 8, 8), Euler, with ``kwargs``."""

    def action(ctx: Ctx) -> Any:
        import diffkit

        args: dict[str, Any] = {"sampler": "euler", **kwargs}
        if callable(args.get("sigmas")):
            args["sigmas"] = args["sigmas"]()
        if isinstance(args.get("dtype"), str):
            import torch

            args["dtype"] = getattr(torch, args["dtype"])
        if "steps" not in args and "sigmas" not in args and "timesteps" not in args:
            args["sigmas"] = [1.0, 0.5]
        denoiser = args.pop("denoiser", zero_denoiser)
        shape = args.pop("shape", (2, 1, 8, 8))
        return diffkit.sample(denoiser, shape, **args)

    return action


def build(kind: Any, name: Any, **config: Any) -> Callable[[Ctx], Any]:
    def action(ctx: Ctx) -> Any:
        import diffkit

        return diffkit.build(kind, name, **config)

    return action


def make_pipeline(**kwargs: Any) -> Callable[[Ctx], Any]:
    """``diffkit.Pipeline(backbone=("unet", TINY_UNET), **kwargs)``, then a 2-step sample of 2."""

    def action(ctx: Ctx) -> Any:
        import diffkit

        args = {"backbone": ("unet", dict(TINY_UNET)), "conditioner": ("class_label", {"num_classes": 10}), **kwargs}
        pipeline = diffkit.Pipeline(**args)
        cond = None if pipeline.conditioner is None else [0, 1]
        import torch

        return pipeline.sample(2, cond=None if cond is None else torch.tensor(cond), steps=2, generator=0)

    return action


def cuda_expect() -> str:
    import torch

    return "ok" if torch.cuda.is_available() else "error"


# -- processes that hold a run folder's lock --------------------------------------------------------------

_HOLDER = r"""
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "host": "reliability-host", "since": "just now",
                         "command": "diffkit train (a stand-in holding the lock)"}).encode())
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(folder: str) -> Callable[[Ctx], None]:
    """Set-up: another process holds ``folder``'s run lock for the case's lifetime."""

    def setup(ctx: Ctx) -> None:
        (ctx.tmp / folder).mkdir(exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(ctx.tmp / folder / "run.lock"), "300"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        ctx.on_cleanup(lambda: (holder.kill(), holder.wait()))
        if holder.stdout is None or holder.stdout.readline().strip() != "locked":
            raise SetupError("the lock holder did not start")
        ctx.names.append(str(holder.pid))

    return setup


def _popen_train(ctx: Ctx, *extra: str, steps: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "diffkit", *train(*extra, steps=steps)]
    process = subprocess.Popen(
        command, cwd=ctx.tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ctx.on_cleanup(lambda: (process.kill(), process.wait()))
    return process


def train_while_another_trains(ctx: Ctx) -> CliResult:
    """A real ``diffkit train`` (100,000 steps) holds R; a second run into R must be refused, naming it."""
    holder = _popen_train(ctx, "train.save_every=0", steps=100_000)
    deadline = time.monotonic() + 45
    while not (ctx.tmp / "R" / "run.json").exists():
        if holder.poll() is not None:
            raise SetupError(f"the first training exited early: {holder.stderr.read()[-2000:] if holder.stderr else ''}")
        if time.monotonic() > deadline:
            raise CaseHang("the first training did not claim R within 45 s")
        time.sleep(0.1)
    ctx.names.append(str(holder.pid))
    return ctx.cli(train())


def two_trainings_at_once(ctx: Ctx) -> CliResult:
    """Two ``diffkit train`` processes into one new folder at the same moment: one must be refused."""
    first = _popen_train(ctx, "train.save_every=1", steps=30)
    second = _popen_train(ctx, "train.save_every=1", steps=30)
    results = []
    for process in (first, second):
        try:
            out, err = process.communicate(timeout=50)
        except subprocess.TimeoutExpired as exc:
            raise CaseHang("a training did not finish within 50 s") from exc
        results.append(CliResult(process.returncode, out, err))
    failed = [r for r in results if r.code != 0]
    if not failed:
        return CliResult(0, "both trainings exited 0", "")
    if len(failed) == 2:
        return CliResult(1, "", "both trainings failed:\n" + failed[0].stderr[-800:] + "\n" + failed[1].stderr[-800:])
    return failed[0]


# -- sampler plugins registered for one case -----------------------------------------------------------------


class _FakeDistribution:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}
        self.version = "1.0"


class _FakeEntryPoint:
    def __init__(self, name: str, module: types.ModuleType) -> None:
        self.name, self.value, self.group = name, f"{name}:plugin", "diffkit"
        self.dist = _FakeDistribution(f"diffkit-{name}")
        self._module = module

    def load(self) -> types.ModuleType:
        return self._module


def with_sampler_plugin(name: str, fn: Callable[..., Any]) -> Callable[[Ctx], None]:
    """Set-up: the default registry also holds sampler ``name`` from a third-party plugin."""

    def setup(ctx: Ctx) -> None:
        import diffkit
        from diffkit import registry

        module = types.ModuleType(f"reliability_{name}")

        def diffkit_register_samplers(samplers: Any) -> None:
            samplers.add(name, fn, summary=f"a reliability-test sampler ({name})")

        module.diffkit_register_samplers = diffkit.hookimpl(diffkit_register_samplers)  # type: ignore[attr-defined]
        registry.reset(registry.PluginHost(entry_points=lambda: [_FakeEntryPoint(name, module)]))

    return setup


def nan_sampler(denoiser: Any, x: Any, sigmas: Any, *, cond: Any = None, generator: Any = None, callback: Any = None) -> Any:
    """Returns NaN everywhere (a broken plugin)."""
    return x * float("nan")


def wrong_shape_sampler(denoiser: Any, x: Any, sigmas: Any, *, cond: Any = None, generator: Any = None, callback: Any = None) -> Any:
    """Returns a tensor of another shape (a broken plugin)."""
    return x.new_zeros(x.shape[0], 3, 40, 24)


def nan_denoiser(x: Any, sigma: Any, cond: Any = None) -> Any:
    return x * float("nan")


def short_denoiser(x: Any, sigma: Any, cond: Any = None) -> Any:
    return x[..., :4]


def meta_sigmas() -> Any:
    import torch

    return torch.tensor([1.0, 0.5], device="meta")


# ====================================================================================================
# train arguments: every bad value is refused before the first step (no checkpoints/ appears)
# ====================================================================================================

_TRAIN_VALUES = {
    "steps": ["0", "-1", "1.5", "x", "1e30", "true", "null", "[4]"],
    "batch_size": ["0", "-8", "2.5", "x"],
    "accumulation": ["0", "-1", "x"],
    "lr": ["NaN", "-1", "2", "x", "Infinity", "[]"],
    "lr_schedule": ["linear", "5"],
    "min_lr_ratio": ["-0.1", "2"],
    "warmup_steps": ["-1", "1.5", "x"],
    "weight_decay": ["-1", "NaN"],
    "adam_betas": ["ab", "5", "[1,2]", "[0.9]", "[0.9,NaN]", '{"a":1}', "[true,0.9]"],
    "grad_clip": ["-1", "NaN", "x"],
    "ema_decay": ["1", "-0.5", "NaN"],
    "seed": ["-1", "1.5", str(2**70)],
    "save_every": ["-1", "x"],
    "keep_last": ["0"],
    "sample_every": ["-1"],
    "log_every": ["0"],
    "precision": ["bf17", "5"],
}
for _key, _values in _TRAIN_VALUES.items():
    for _value in _values:
        _slug = {"NaN": "nan", "Infinity": "inf", "-1": "neg1", "-8": "neg8", "-0.1": "neg0.1", "-0.5": "neg0.5", str(2**70): "2_70"}.get(
            _value, "".join(ch if ch.isalnum() or ch == "." else "_" for ch in _value)[:20]
        )
        case(
            f"train.{_key}={_slug}", TRAIN, f"train.{_key}={_value}", train(f"train.{_key}={_value}", steps=None if _key == "steps" else 4),
            names=(_key,),
        )

case("train.batch_size=1e8", TRAIN, "train.batch_size=100000000 (25 GB per batch)", train("train.batch_size=100000000"), names=("batch_size",))

_SAMPLE_VALUES = {
    "guidance": ["NaN", "-1", "x", "1e30", "true", "Infinity"],
    "steps": ["0", "-2", "1.5"],
    "n": ["0", "-3", "x", "100000000"],
    "eval_n": ["0", "x"],
}
for _key, _values in _SAMPLE_VALUES.items():
    for _value in _values:
        _slug = {"NaN": "nan", "Infinity": "inf", "-1": "neg1", "-2": "neg2", "-3": "neg3"}.get(_value, _value)
        case(
            f"sample.{_key}={_slug}", TRAIN, f"sample.{_key}={_value} (refused before training)",
            train(f"sample.{_key}={_value}"), names=(f"sample.{_key}",),
        )

for _slug, _setting, _names in [
    ("sampler", "sampler=nosuch", ("nosuch",)), ("parameterization", "parameterization=z", ("parameterization",)),
    ("schedule", "schedule=nosuch", ("nosuch",)), ("schedule_config_5", 'schedule=["cosine", 5]', ("schedule",)),
    ("schedule_5", "schedule=5", ("schedule",)),
    ("schedule_bogus_option", 'schedule=["cosine", {"bogus": 1}]', ("bogus",)),
    ("schedule_timesteps_0", 'schedule=["linear", {"num_train_timesteps": 0}]', ("num_train_timesteps",)),
    ("default_steps_0", "default_steps=0", ("default_steps",)),
    ("objective_bogus", 'objective={"weighting": "bogus"}', ("bogus",)),
    ("objective_string", 'objective="x"', ("objective",)),
    ("classes_0", 'conditioner=["class_label", {"num_classes": 0}]', ("num_classes",)),
    ("conditioner_unknown", 'conditioner=["nosuch", {}]', ("nosuch",)),
    ("backbone_unknown", "backbone=nosuch", ("nosuch",)),
]:
    _value = f"pipeline.{_setting}"
    case(f"pipeline.{_slug}", TRAIN, _value, train(_value), names=_names)

for _slug, _setting, _names in [
    ("channels_empty", "block_out_channels=[]", ("block_out_channels",)),
    ("channels_zero", "block_out_channels=[0]", ("block_out_channels",)),
    ("channels_text", "block_out_channels=x", ("block_out_channels",)),
    ("channels_negative", "block_out_channels=[-32,64]", ("block_out_channels",)),
    ("norm_groups_7", "norm_groups=7", ("norm_groups",)), ("norm_groups_0", "norm_groups=0", ("norm_groups",)),
    ("sample_size_0", "sample_size=0", ("sample_size",)),
    ("sample_size_16", "sample_size=16 (the data are 8×8)", ("16",)),
    ("layers_0", "layers_per_block=0", ("layers_per_block",)),
    ("in_channels_3", "in_channels=3 (the data have 1 channel)", ("3",)), ("out_channels_3", "out_channels=3", ("3",)),
    ("attention_level_5", "attention_levels=[5]", ("attention",)),
    ("dropout_2", "dropout=2", ("dropout",)), ("unknown_key", "foo=1", ("foo",)),
]:
    _value = f"backbones.unet.{_setting}"
    case(f"backbones.unet.{_slug}", TRAIN, _value, train(_value.split(" (")[0]), names=_names)

case("backbones.dit.patch_3", TRAIN, "--backbone dit backbones.dit.patch_size=3 (8 is not a multiple)",
     train("--backbone", "dit", "backbones.dit.patch_size=3"), names=("patch_size",))
case("backbones.dit.heads_3", TRAIN, "--backbone dit backbones.dit.num_heads=3 (128 is not a multiple)",
     train("--backbone", "dit", "backbones.dit.num_heads=3"), names=("num_heads",))

for _slug, _value, _names in [
    ("size_0", "data.size=0", ("data.size",)), ("size_text", "data.size=x", ("data.size",)),
    ("size_16", "data.size=16 (the UNet is built for 8×8)", ("16",)), ("name_unknown", "data.name=nosuch", ("nosuch",)),
    ("folder_missing_root", "data.name=folder", ("data.root",)),
]:
    case(f"data.{_slug}", TRAIN, _value, train(_value.split(" (")[0]), names=_names)

for _slug, _value, _names in [
    ("empty_key", "=5", ()), ("no_equals", "train.steps", ("train.steps",)), ("double_dot", "train..steps=1", ()),
    ("into_value", "train.steps.x=1", ("train.steps",)), ("leading_dot", ".steps=1", ()),
    ("trailing_dot", "train.=1", ()), ("unknown_section", "nosuch.x=1", ("nosuch",)),
    ("typo_key", "train.stpes=4", ("stpes",)), ("section_to_value", "train=5", ("train",)),
    ("section_to_list", "pipeline=[]", ("pipeline",)), ("section_to_null", "data=null", ("data",)),
    ("prompts_on_digits", 'sample.prompts=["a 7"]', ("prompts",)),
]:
    case(f"override.{_slug}", TRAIN, f"override {_value!r}", train(_value), names=_names)

case("cli.recipe_unknown", TRAIN, "--recipe nosuch", train(recipe="nosuch"), names=("nosuch",))
case("cli.recipe_empty", TRAIN, "--recipe ''", train(recipe=""), names=("recipe",))
case("cli.backbone_unknown", TRAIN, "--backbone nosuch", train("--backbone", "nosuch"), names=("nosuch",))
case("cli.sampler_unknown", TRAIN, "--sampler nosuch", train("--sampler", "nosuch"), names=("nosuch",))
case("cli.steps_0", TRAIN, "--steps 0", train(steps=0), names=("--steps",))
case("cli.steps_negative", TRAIN, "--steps -5", train(steps=-5), names=("--steps",))
case("cli.steps_text", TRAIN, "--steps x", train(steps="x"), names=("--steps",))  # type: ignore[arg-type]
case("cli.steps_fraction", TRAIN, "--steps 1.5", train(steps="1.5"), names=("--steps",))  # type: ignore[arg-type]
case("cli.resume_and_overwrite", TRAIN, "--resume --overwrite together", train("--resume", "--overwrite"), setup=run())
case("cli.no_recipe", TRAIN, "diffkit train without --recipe", train(recipe=None), names=("--recipe",))
case("cli.resume_without_out", TRAIN, "diffkit train --resume without --out or --recipe",
     ["train", "--resume", "--no-progress"], names=("--out",))
case("cli.unknown_flag", TRAIN, "diffkit train --stpes 4 (a misspelt flag)", train("--stpes"), names=("--stpes",))


# ====================================================================================================
# run folders: --out, ownership, --resume / --overwrite / --steps, the lock
# ====================================================================================================

case("out.is_file", RUNS, "--out names an existing file", train(), setup=write("R", "the user's file\n"), names=("R",))
case("out.read_only", RUNS, "--out is a read-only folder", train(), setup=mkdir("R", 0o555), names=("R",))
case("out.under_proc", RUNS, "--out /proc/diffkit-reliability/R", train(out="/proc/diffkit-reliability/R"))
case("out.parent_is_file", RUNS, "--out f/R where f is a file", train(out="f/R"), setup=write("f", "x"))
case("out.dev_null", RUNS, "--out /dev/null", train(out="/dev/null"))
case("out.empty_string", RUNS, "--out '' (would be the working directory)", train(out=""), setup=write("notes.txt", "mine"))
case("out.nul_byte", RUNS, "--out with a NUL byte", train(out="R\x00x"))
case("out.name_too_long", RUNS, "--out with a 300-character name", train(out="R" * 300))
case("out.dangling_symlink", RUNS, "--out is a symlink to a missing folder", train(), setup=symlink("R", "missing"))
case("out.symlink_to_user_folder", RUNS, "--out is a symlink to a folder of the user's files", train(),
     setup=chain(write("mine/notes.txt", "mine"), symlink("R", "mine")), names=("notes.txt",))
case("out.checkpoints_read_only", RUNS, "--resume --steps 6 with checkpoints/ read-only", resume(),
     setup=chain(run(), lambda ctx: os.chmod(ctx.tmp / "R" / "checkpoints", 0o555)), names=("checkpoint",),
     protect=("R/checkpoints/*", "R/pipeline/*", "R/samples.png"))
case("out.run_lock_symlink", RUNS, "an empty --out whose run.lock is a symlink to the user's file", train(),
     setup=chain(write("mine.txt", "mine"), mkdir("R"), symlink("R/run.lock", "../mine.txt")),
     expect="either", protect=("mine.txt",), verify=finished_at(4))

case("run.second_run_refused", RUNS, "a second train into a run folder without --resume", train(), setup=run(),
     names=("--resume", "--overwrite"))
case("run.second_run_other_settings", RUNS, "a second train with other settings, no flag", train("train.lr=0.005"),
     setup=run(), names=("--resume",))
for _file, _data in [
    ("samples.png", b"\x89PNG the user's picture"), ("progress.gif", b"GIF89a user"), ("trajectory.gif", b"GIF89a user"),
    ("recipe.json", b'{"mine": true}\n'), ("notes.txt", b"my notes\n"), (".hidden", b"dotfile\n"),
]:
    case(f"user_files.{_file}", RUNS, f"--out holds the user's {_file}", train(), setup=write(f"R/{_file}", _data), names=(_file,))
    case(f"user_files.{_file}.overwrite", RUNS, f"--overwrite into a folder holding the user's {_file}", train("--overwrite"),
         setup=write(f"R/{_file}", _data), names=(_file,))
case("user_files.pipeline_dir", RUNS, "--out holds the user's own pipeline/ folder", train(),
     setup=lambda ctx: ctx.pipe_copy("R/pipeline"), names=("pipeline",))
case("user_files.pipeline_dir.overwrite", RUNS, "--overwrite into a folder holding the user's pipeline/", train("--overwrite"),
     setup=lambda ctx: ctx.pipe_copy("R/pipeline"), names=("pipeline",))
case("user_files.resume", RUNS, "--resume into a folder of the user's files (no run.json)", resume(steps=4),
     setup=write("R/recipe.json", '{"mine": true}\n'), names=("run.json",))
case("run.overwrite_real_run", RUNS, "--overwrite on an earlier run: a fresh run", train("--overwrite"), setup=run(),
     expect="ok", verify=new_run())
case("run.overwrite_keeps_user_file", RUNS, "--overwrite on a run folder that also holds notes.txt", train("--overwrite"),
     setup=chain(run(), write("R/notes.txt", "mine")), expect="ok", verify=new_run(), protect=("R/notes.txt",))
case("run.overwrite_symlinked_pipeline", RUNS, "--overwrite where pipeline/ is a symlink to the user's folder",
     train("--overwrite"), setup=chain(run(), write("mine/keep.txt", "mine"), symlink("R/pipeline", "../mine")),
     expect="ok", verify=new_run(), protect=("mine/*",))
case("run.resume_symlinked_samples", RUNS, "--resume --steps 6 where samples.png is a symlink to the user's file",
     resume(), setup=chain(run(), write("mine.png", b"the user's picture"), symlink("R/samples.png", "../mine.png")),
     expect="ok", verify=finished_at(6), protect=("mine.png",))
case("run.run_json_symlink_resume", RUNS, "--resume --steps 6 where run.json is a symlink to the user's copy of it",
     resume(), setup=chain(run(), copy("R/run.json", "mine.json"), symlink("R/run.json", "../mine.json")),
     expect="either", verify=finished_at(6), protect=("mine.json",))
case("run.recipe_symlink_overwrite", RUNS, "--overwrite where recipe.json is a symlink to the user's file",
     train("--overwrite"), setup=chain(run(), write("mine.json", '{"mine": 1}'), symlink("R/recipe.json", "../mine.json")),
     expect="ok", verify=new_run(), protect=("mine.json",))
case("run.checkpoints_symlink_overwrite", RUNS, "--overwrite where checkpoints/ is a symlink to the user's folder",
     train("--overwrite"), setup=chain(run(), write("mine/keep.txt", "mine"), symlink("R/checkpoints", "../mine")),
     expect="ok", verify=new_run(), protect=("mine/*",))
case("run.resume_other_lr", RUNS, "--resume with train.lr=0.005 (another recipe)", resume("train.lr=0.005", steps=4),
     setup=run(), names=("train.lr",))
case("run.resume_other_norm_groups", RUNS, "--resume with backbones.unet.norm_groups=4",
     resume("backbones.unet.norm_groups=4", steps=4), setup=run(), names=("backbones.unet.norm_groups",))
case("run.resume_other_backbone", RUNS, "--resume --backbone dit", resume("--backbone", "dit", steps=4), setup=run(),
     names=("pipeline.backbone",))
case("run.resume_other_guidance", RUNS, "--resume with sample.guidance=3", resume("sample.guidance=3", steps=4),
     setup=run(), names=("sample.guidance",))
case("run.resume_extend", RUNS, "--resume --steps 8 after a 4-step run (extend)", resume(steps=8), setup=run(),
     expect="ok", verify=finished_at(8))
case("run.resume_extend_bare", RUNS, "train --resume --out R --steps 8 without --recipe",
     ["train", "--resume", "--out", "R", "--steps", "8", "--no-progress"], setup=run(), expect="ok", verify=finished_at(8))
case("run.resume_extend_trailing_slash", RUNS, "--resume --steps 6 --out R/ (trailing slash)", resume(out="R/"),
     setup=run(), expect="ok", verify=finished_at(6))
case("run.resume_shorten_2", RUNS, "--resume --steps 2 (below the newest checkpoint, step 4)", resume(steps=2),
     setup=run(), names=("steps",))
case("run.resume_shorten_3", RUNS, "--resume --steps 3 (below the recorded 4)", resume(steps=3), setup=run(),
     names=("steps",))
case("run.resume_finished", RUNS, "--resume of a finished run: nothing to do, nothing rewritten", resume(steps=4),
     setup=run(), expect="ok", protect=ALL)
case("run.resume_finished_bare", RUNS, "train --resume --out R of a finished run, no --recipe",
     ["train", "--resume", "--out", "R", "--no-progress"], setup=run(), expect="ok", protect=ALL)
case("run.resume_missing_folder", RUNS, "--resume --out of a folder that does not exist", resume(steps=4))
case("run.resume_empty_folder", RUNS, "--resume --out of an empty folder", resume(steps=4), setup=mkdir("R"),
     names=("run.json",))
case("run.resume_stale_temporary", RUNS, "--resume --steps 6 with a killed save's temporary folder",
     resume(), setup=chain(run(), copy("R/checkpoints/step-000000004", "R/checkpoints/.step-000000006.0123456789ab.tmp")),
     expect="ok", verify=finished_at(6))
case("run.checkpoints_is_file", RUNS, "--resume --steps 6 where checkpoints is a file", resume(),
     setup=chain(run(), remove("R/checkpoints"), write("R/checkpoints", "x")), names=("checkpoints",))
case("run.resume_pipeline_deleted", RUNS, "--resume of a finished run whose pipeline/ the user deleted", resume(steps=4),
     setup=chain(run(), remove("R/pipeline")), expect="either", verify=finished_at(4), names=("pipeline",))
case("lock.held_by_training", RUNS, "a second train while a real diffkit train holds R (names the holder)",
     train_while_another_trains, protect=(), allow_work=True, timeout=90)
case("lock.two_at_once", RUNS, "two diffkit train processes started together into one new folder",
     two_trainings_at_once, protect=(), allow_work=True, timeout=110)
case("lock.held_resume", RUNS, "--resume --steps 6 while another process holds R's lock", resume(),
     setup=chain(run(), hold_lock("R")))
case("lock.held_overwrite", RUNS, "--overwrite while another process holds R's lock (must discard nothing)",
     train("--overwrite"), setup=chain(run(), hold_lock("R")))
case("lock.held_new_folder", RUNS, "a new run into an empty folder another process holds the lock of", train(),
     setup=hold_lock("R"))


# ====================================================================================================
# checkpoints and run records: damaged recipe.json / run.json / checkpoints on --resume
# ====================================================================================================

_DAMAGE = {
    "truncated": lambda path: truncate(path, 0.5),
    "list": lambda path: write(path, "[]\n"),
    "null": lambda path: write(path, "null\n"),
    "not_utf8": lambda path: write(path, b"\xff\xfe{\x00\x81 not text"),
    "fifo": lambda path: fifo(path),
}
for _kind, _damage in _DAMAGE.items():
    case(f"recipe_json.{_kind}", RECORDS, f"recipe.json {_kind.replace('_', ' ')}, --resume --steps 6", resume(),
         setup=chain(run(), _damage("R/recipe.json")), names=("recipe.json",), timeout=30)
    case(f"run_json.{_kind}", RECORDS, f"run.json {_kind.replace('_', ' ')}, --resume --steps 6", resume(),
         setup=chain(run(), _damage("R/run.json")), names=("run.json",), timeout=30)
case("recipe_json.fifo.no_flag", RECORDS, "recipe.json a FIFO, a second train without flags", train(),
     setup=chain(run(), fifo("R/recipe.json")), names=("--resume",), timeout=30)
case("recipe_json.missing", RECORDS, "recipe.json deleted, --resume --steps 6", resume(),
     setup=chain(run(), remove("R/recipe.json")), names=("recipe.json",))
case("recipe_json.edited", RECORDS, "recipe.json edited by hand (train.lr changed), --resume --steps 6", resume(),
     setup=chain(run(), json_set("R/recipe.json", "train.lr", 0.5)), names=("recipe.json",))
case("run_json.no_run_id", RECORDS, "run.json without run_id, --resume --steps 6", resume(),
     setup=chain(run(), json_del("R/run.json", "run_id")), names=("run_id",))
case("run_json.steps_text", RECORDS, 'run.json "steps": "x", --resume --steps 6', resume(),
     setup=chain(run(), json_set("R/run.json", "steps", "x")), names=("steps",))
case("run_json.missing", RECORDS, "run.json deleted, --resume --steps 6", resume(),
     setup=chain(run(), remove("R/run.json")), names=("run.json",))
case("run_json.damaged_overwrite", RECORDS, "run.json holds [], --overwrite starts afresh", train("--overwrite"),
     setup=chain(run(), write("R/run.json", "[]")), expect="ok", verify=finished_at(4))

_NEWEST = "R/checkpoints/step-000000004"
_OLDER = "R/checkpoints/step-000000002"
_SKIP = {"expect": "ok", "verify": finished_at(6, warns="step-000000004"), "timeout": 40}
for _kind, _damage in _DAMAGE.items():
    case(f"meta_json.{_kind}", RECORDS, f"newest checkpoint's meta.json {_kind.replace('_', ' ')}: resume from step 2",
         resume(), setup=chain(run(), _damage(f"{_NEWEST}/meta.json")), **_SKIP)
for _slug, _what, _damage in [
    ("missing", "meta.json missing", remove(f"{_NEWEST}/meta.json")),
    ("huge_step", "meta.json step 10**400", lambda ctx: (ctx.tmp / _NEWEST / "meta.json").write_text(
        (ctx.tmp / _NEWEST / "meta.json").read_text().replace('"step": 4', '"step": 1' + "0" * 400))),
    ("step_text", 'meta.json "step": "4"', json_set(f"{_NEWEST}/meta.json", "step", "4")),
    ("wrong_step", "meta.json says step 2", json_set(f"{_NEWEST}/meta.json", "step", 2)),
    ("no_manifest", "meta.json without its file manifest", json_set(f"{_NEWEST}/meta.json", "files", {})),
    ("wrong_size", "meta.json records another size", json_set(f"{_NEWEST}/meta.json", ("files", "state.pt", "size"), 7)),
    ("other_run", "meta.json names another run id", json_set(f"{_NEWEST}/meta.json", "run.run_id", "0" * 32)),
    ("manifest_escape", "manifest names ../../run.json", json_edit(
        f"{_NEWEST}/meta.json", lambda m: m["files"].update({"../../run.json": {"size": 1, "sha256": "0" * 64}}))),
    ("manifest_absolute", "manifest names /etc/passwd", json_edit(
        f"{_NEWEST}/meta.json", lambda m: m["files"].update({"/etc/passwd": {"size": 1, "sha256": "0" * 64}}))),
]:
    case(f"meta_json.{_slug}", RECORDS, f"newest checkpoint: {_what}: resume from step 2", resume(),
         setup=chain(run(), _damage), **_SKIP)
for _slug, _what, _damage in [
    ("model_truncated", "model.safetensors truncated", truncate(f"{_NEWEST}/model.safetensors")),
    ("model_missing", "model.safetensors missing", remove(f"{_NEWEST}/model.safetensors")),
    ("model_garbage", "model.safetensors random bytes", write(f"{_NEWEST}/model.safetensors", garbage(4096))),
    ("ema_missing", "ema.safetensors missing", remove(f"{_NEWEST}/ema.safetensors")),
    ("state_missing", "state.pt missing", remove(f"{_NEWEST}/state.pt")),
    ("state_truncated", "state.pt truncated", truncate(f"{_NEWEST}/state.pt")),
    ("state_fifo", "state.pt a FIFO", fifo(f"{_NEWEST}/state.pt")),
    ("model_nan", "NaN written into model.safetensors (manifest not updated)",
     tensors(f"{_NEWEST}/model.safetensors", poke(math.nan))),
]:
    case(f"checkpoint.{_slug}", RECORDS, f"newest checkpoint: {_what}: resume from step 2", resume(),
         setup=chain(run(), _damage), **_SKIP)
case("checkpoint.pickle_payload", RECORDS, "newest state.pt a pickle payload (os.system): skipped, never run", resume(),
     setup=chain(run(), pickle_payload(f"{_NEWEST}/state.pt")), post=no_pwned, **_SKIP)
case("checkpoint.pickle_payload_rehashed", RECORDS, "state.pt pickle payloads with matching manifests in every checkpoint",
     resume(), setup=chain(run(), pickle_payload(f"{_NEWEST}/state.pt"), rehash(_NEWEST),
                           pickle_payload(f"{_OLDER}/state.pt"), rehash(_OLDER)),
     post=no_pwned, forbid=("weights_only=False",), names=("state.pt",))
case("checkpoint.all_meta_truncated", RECORDS, "every checkpoint's meta.json truncated", resume(),
     setup=chain(run(), truncate(f"{_NEWEST}/meta.json"), truncate(f"{_OLDER}/meta.json")),
     names=("step-000000002", "step-000000004"))
case("checkpoint.all_models_truncated", RECORDS, "every checkpoint's model.safetensors truncated", resume(),
     setup=chain(run(), truncate(f"{_NEWEST}/model.safetensors"), truncate(f"{_OLDER}/model.safetensors")),
     names=("step-000000002", "step-000000004"))
case("checkpoint.all_other_run", RECORDS, "every checkpoint written by another run (run id)", resume(),
     setup=chain(run(), json_set(f"{_NEWEST}/meta.json", "run.run_id", "0" * 32),
                 json_set(f"{_OLDER}/meta.json", "run.run_id", "0" * 32)), names=("another run",))
case("checkpoint.nan_rehashed", RECORDS, "NaN in the newest checkpoint's weights, manifest matching",
     resume(), setup=chain(run(), tensors(f"{_NEWEST}/model.safetensors", poke(math.nan)), rehash(_NEWEST)),
     expect="either", verify=finished_at(6), protect=(f"{_OLDER}/*", "R/pipeline/*"), names=("step",))
case("checkpoint.renamed_step", RECORDS, "a copy of step 4 named step-000000005 (meta says 4)", resume(),
     setup=chain(run(), copy(_NEWEST, "R/checkpoints/step-000000005")), expect="ok",
     verify=finished_at(6, warns="step-000000005"))
case("checkpoint.from_the_future", RECORDS, "an intact checkpoint at step 100 of a run planned for 6", resume(),
     setup=chain(run(), copy(_NEWEST, "R/checkpoints/step-000000100"),
                 json_set("R/checkpoints/step-000000100/meta.json", "step", 100)), names=("100",),
     protect=(f"{_OLDER}/*", f"{_NEWEST}/*", "R/pipeline/*"))


# ====================================================================================================
# diffkit sample: arguments and outputs
# ====================================================================================================

case("sample.ok_run_folder", SAMPLE, "(control) sample a run folder", sample(), setup=run(), expect="ok", verify=png_ok())
case("sample.ok_pipeline_folder", SAMPLE, "(control) sample a pipeline folder", sample(src="P"), setup=pipe(),
     expect="ok", verify=png_ok())
case("sample.ok_class", SAMPLE, "(control) --class 3", sample("--class", "3"), setup=run(), expect="ok", verify=png_ok())
case("sample.ok_new_parent", SAMPLE, "(control) --out in a folder that does not exist yet (created)",
     sample(out="new/dir/s.png"), setup=run(), expect="ok", verify=png_ok("new/dir/s.png"))
case("sample.from_missing", SAMPLE, "--from a folder that does not exist", sample(src="missing"), names=("missing",))
case("sample.from_file", SAMPLE, "--from a file", sample(src="f"), setup=write("f", "x"), names=("f",))
case("sample.from_empty_folder", SAMPLE, "--from an empty folder", sample(src="E"), setup=mkdir("E"), names=("E",))
case("sample.from_run_without_pipeline", SAMPLE, "--from a run folder without pipeline/", sample(),
     setup=chain(run(), remove("R/pipeline")), names=("pipeline",))
case("sample.from_symlink_loop", SAMPLE, "--from a symlink that points to itself", sample(src="loop"),
     setup=symlink("loop", "loop"))
case("sample.from_empty_string", SAMPLE, "--from '' (the working directory, holding a run)", sample(src=""), setup=run())
case("sample.from_nul", SAMPLE, "--from with a NUL byte", sample(src="R\x00"), setup=run())
for _slug, _args, _names in [
    ("n_0", ["--n", "0"], ("--n",)), ("n_negative", ["--n", "-1"], ("--n",)),
    ("n_1e8", ["--n", "100000000"], ("100000000",)), ("n_text", ["--n", "x"], ("--n",)),
    ("seed_2_70", ["--seed", str(2**70)], ("seed",)), ("seed_negative", ["--seed", "-1"], ("seed",)),
    ("steps_0", ["--steps", "0"], ("--steps",)), ("steps_negative", ["--steps", "-2"], ("--steps",)),
    ("steps_5000", ["--steps", "5000"], ("steps",)), ("sampler_unknown", ["--sampler", "nosuch"], ("nosuch",)),
    ("class_10", ["--class", "10"], ("10",)), ("class_negative", ["--class", "-1"], ("-1",)),
    ("prompt_on_class_pipeline", ["--prompt", "a seven"], ("prompt",)),
    ("prompt_and_class", ["--prompt", "a seven", "--class", "7"], ("--class",)),
    ("negative_on_class_pipeline", ["--negative", "blurry", "--guidance", "2"], ("negative",)),
    ("guidance_nan", ["--guidance", "nan"], ("guidance",)), ("guidance_inf", ["--guidance", "inf"], ("guidance",)),
    ("guidance_negative", ["--guidance", "-1"], ("guidance",)),
    ("guidance_1e30", ["--guidance", "1e30"], ("guidance",)), ("precision_bf17", ["--precision", "bf17"], ("bf17",)),
    ("out_folder", ["--out", "D"], ("D",)), ("out_proc", ["--out", "/proc/diffkit-reliability.png"], ("/proc",)),
    ("out_jpg", ["--out", "s.jpg"], ("png",)), ("out_no_extension", ["--out", "s"], ("png",)),
    ("out_empty", ["--out", ""], ()), ("out_nul", ["--out", "s\x00.png"], ()),
    ("out_parent_is_file", ["--out", "f/s.png"], ("f",)),
    ("height_0", ["--height", "0"], ("height",)), ("height_text", ["--height", "x"], ("--height",)),
    ("height_odd", ["--height", "7"], ("height",)), ("width_1e9", ["--width", "1000000000"], ("width",)),
    ("image_missing", ["--image", "missing.png"], ("missing.png",)), ("image_folder", ["--image", "D"], ("D",)),
    ("image_not_a_picture", ["--image", "f"], ("f",)), ("strength_without_image", ["--strength", "0.5"], ("--image",)),
]:
    _setup = chain(run(), mkdir("D"), write("f", "x"))
    case(f"sample.{_slug}", SAMPLE, "diffkit sample " + " ".join(a if a else "''" for a in _args).replace("\x00", "\\0"),
         sample(*_args), setup=_setup, names=_names, post=absent("s.png", "s.jpg"))
case("sample.out_read_only_folder", SAMPLE, "--out into a read-only folder", sample(out="ro/s.png"),
     setup=chain(run(), mkdir("ro", 0o555)), names=("ro",))


# ====================================================================================================
# pipeline folders: damaged or hostile pipeline.json, diffkit.json, weights (diffkit sample --from P)
# ====================================================================================================

_P = sample(src="P")
_PJ = "P/pipeline.json"
for _slug, _what, _damage in [
    ("list", "pipeline.json holds []", write(_PJ, "[]")), ("null", "pipeline.json holds null", write(_PJ, "null")),
    ("string", 'pipeline.json holds "x"', write(_PJ, '"x"')), ("number", "pipeline.json holds 5", write(_PJ, "5")),
    ("empty_object", "pipeline.json holds {}", write(_PJ, "{}")),
    ("truncated", "pipeline.json truncated", truncate(_PJ)),
    ("not_utf8", "pipeline.json not UTF-8", write(_PJ, b"\xff\xfe{\x00\x81")),
    ("fifo", "pipeline.json a FIFO", fifo(_PJ)),
    ("nan_constant", "pipeline.json with a NaN number", lambda ctx: (ctx.tmp / _PJ).write_text(
        (ctx.tmp / _PJ).read_text().replace('"default_steps": 20', '"default_steps": NaN'))),
    ("version_99", "format_version 99", json_set(_PJ, "format_version", 99)),
    ("version_text", 'format_version "1"', json_set(_PJ, "format_version", "1")),
    ("version_huge", "format_version 10**30", json_set(_PJ, "format_version", 10**30)),
    ("missing", "pipeline.json deleted", remove(_PJ)),
    ("shape_text", 'sample_shape "abc"', json_set(_PJ, "sample_shape", "abc")),
    ("shape_16", "sample_shape [1,16,16] on an 8×8 model", json_set(_PJ, "sample_shape", [1, 16, 16])),
    ("shape_2d", "sample_shape [1,8]", json_set(_PJ, "sample_shape", [1, 8])),
    ("shape_zero", "sample_shape [0,8,8]", json_set(_PJ, "sample_shape", [0, 8, 8])),
    ("shape_negative", "sample_shape [-1,8,8]", json_set(_PJ, "sample_shape", [-1, 8, 8])),
    ("shape_channels", "sample_shape [2,8,8] on a 1-channel model", json_set(_PJ, "sample_shape", [2, 8, 8])),
    ("schedule_config_list", "schedule.config []", json_set(_PJ, "schedule.config", [])),
    ("schedule_unknown", 'schedule.name "nosuch"', json_set(_PJ, "schedule.name", "nosuch")),
    ("schedule_bogus_option", 'schedule.config {"bogus": 1}', json_set(_PJ, "schedule.config", {"bogus": 1})),
    ("schedule_timesteps_negative", "schedule num_train_timesteps -5", json_set(_PJ, "schedule.config.num_train_timesteps", -5)),
    ("schedule_string", 'schedule "x"', json_set(_PJ, "schedule", "x")),
    ("schedule_missing", "no schedule entry", json_del(_PJ, "schedule")),
    ("sampler_options_text", 'sampler.options "abc"', json_set(_PJ, "sampler.options", "abc")),
    ("sampler_options_bogus", 'sampler.options {"bogus": 1}', json_set(_PJ, "sampler.options", {"bogus": 1})),
    ("sampler_unknown", 'sampler.name "nosuch"', json_set(_PJ, "sampler.name", "nosuch")),
    ("sampler_list", "sampler []", json_set(_PJ, "sampler", [])),
    ("parameterization", 'parameterization "z"', json_set(_PJ, "parameterization", "z")),
    ("objective_text", 'objective "x"', json_set(_PJ, "objective", "x")),
    ("objective_bogus", 'objective {"bogus": 1}', json_set(_PJ, "objective", {"bogus": 1})),
    ("default_steps_0", "default_steps 0", json_set(_PJ, "default_steps", 0)),
    ("default_steps_text", 'default_steps "x"', json_set(_PJ, "default_steps", "x")),
    ("components_string", 'components "backbone" (a string)', json_set(_PJ, "components", "backbone")),
    ("components_empty", "components []", json_set(_PJ, "components", [])),
    ("components_twice", 'components ["backbone", "backbone", "conditioner"]',
     json_set(_PJ, "components", ["backbone", "backbone", "conditioner"])),
    ("components_number", "components [5]", json_set(_PJ, "components", [5])),
    ("components_unknown", 'components ["nosuch"]', json_set(_PJ, "components", ["backbone", "nosuch"])),
    ("components_null", "components null", json_set(_PJ, "components", None)),
]:
    case(f"pipeline_json.{_slug}", PIPE, _what, _P, setup=chain(pipe(), _damage), post=absent("s.png"), timeout=30)

case("components.dotdot", PIPE, 'components ["../../../../etc"] (outside the folder)', _P,
     setup=chain(pipe(), json_set(_PJ, "components", ["../../../../etc"])), forbid=("passwd", "hostname", "fstab"),
     post=absent("s.png"))
case("components.absolute", PIPE, 'components ["/etc"]', _P, setup=chain(pipe(), json_set(_PJ, "components", ["/etc"])),
     forbid=("passwd", "hostname", "fstab"), post=absent("s.png"))
case("components.absolute_component", PIPE, "components name an absolute path holding a valid backbone", _P,
     setup=chain(pipe(), copy("P/backbone", "outside/backbone"),
                 lambda ctx: json_set(_PJ, "components", [str(ctx.tmp / "outside" / "backbone"), "conditioner"])(ctx)),
     post=absent("s.png"))
case("components.symlink_outside", PIPE, "backbone/ is a symlink to a component outside the folder", _P,
     setup=chain(pipe(), copy("P/backbone", "outside/backbone"), symlink("P/backbone", "../outside/backbone")),
     post=absent("s.png"))
case("components.dotdot_valid", PIPE, 'components ["../outside/backbone", ...] (a valid one, outside)', _P,
     setup=chain(pipe(), copy("P/backbone", "outside/backbone"),
                 json_set(_PJ, "components", ["../outside/backbone", "conditioner"])), post=absent("s.png"))

_DJ = "P/backbone/diffkit.json"
for _slug, _what, _damage in [
    ("config_list", "component config []", json_set(_DJ, "config", [])),
    ("kind_number", "component kind 5", json_set(_DJ, "kind", 5)),
    ("name_unknown", 'component name "nosuch"', json_set(_DJ, "name", "nosuch")),
    ("name_other_plugin", "component from a plugin that is not installed", chain(
        json_set(_DJ, "name", "fancy_unet"), json_set(_DJ, "origin", {"plugin": "fancy", "distribution": "diffkit-fancy", "version": "2.0"}))),
    ("version_huge", "component format_version 10**30", json_set(_DJ, "format_version", 10**30)),
    ("list", "component diffkit.json holds []", write(_DJ, "[]")),
    ("truncated", "component diffkit.json truncated", truncate(_DJ)),
    ("fifo", "component diffkit.json a FIFO", fifo(_DJ)),
    ("config_bad_value", 'component config block_out_channels "x"', json_set(_DJ, "config.block_out_channels", "x")),
    ("config_empty", "component config {} (weights will not fit)", json_set(_DJ, "config", {})),
    ("kind_sampler", 'component kind "sampler", name "unipc"', chain(json_set(_DJ, "kind", "sampler"), json_set(_DJ, "name", "unipc"))),
    ("name_dit", 'component name "dit" with the UNet config', json_set(_DJ, "name", "dit")),
    ("save_id_mismatch", "component save_id of another save", json_set(_DJ, "save_id", "f" * 32)),
    ("missing", "component diffkit.json deleted", remove(_DJ)),
]:
    case(f"component_json.{_slug}", PIPE, _what, _P, setup=chain(pipe(), _damage), post=absent("s.png"), timeout=30)

_W = "P/backbone/model.safetensors"
for _slug, _what, _damage in [
    ("nan", "a NaN in the backbone weights", tensors(_W, poke(math.nan))),
    ("inf", "an inf in the backbone weights", tensors(_W, poke(math.inf))),
    ("int64", "a backbone weight stored as int64", tensors(_W, retype("int64"))),
    ("bool", "a backbone weight stored as bool", tensors(_W, retype("bool"))),
    ("all_nan", "every backbone weight NaN", tensors(_W, lambda v: {k: t * math.nan for k, t in v.items()})),
    ("truncated", "backbone weights truncated", truncate(_W)),
    ("garbage", "backbone weights random bytes", write(_W, garbage(4096, seed=1))),
    ("empty", "backbone weights an empty file", write(_W, b"")), ("missing", "backbone weights deleted", remove(_W)),
    ("fifo", "backbone weights a FIFO", fifo(_W)),
    ("header_2_60", "safetensors header length 2**60", write(_W, safetensors_bytes(b"{}", length=2**60))),
    ("offsets_beyond", "a tensor's data_offsets beyond the file", write(_W, safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}, b"\0" * 8))),
    ("header_not_json", "safetensors header not JSON", write(_W, safetensors_bytes(b"nope!"))),
    ("header_list", "safetensors header a JSON list", write(_W, safetensors_bytes(b"[]"))),
    ("extra_key", "an extra tensor in the weights", tensors(_W, lambda v: v.update(extra=v[_first_float(v)].clone()))),
    ("missing_key", "a tensor missing from the weights", tensors(_W, lambda v: v.pop(_first_float(v)))),
    ("wrong_shape", "a tensor of the wrong shape", tensors(_W, lambda v: v.update({_first_float(v): v[_first_float(v)][:1].clone()}))),
]:
    case(f"weights.{_slug}", PIPE, _what, _P, setup=chain(pipe(), _damage), post=absent("s.png"), timeout=30)


# ====================================================================================================
# Python API
# ====================================================================================================

_BUILD_NAMES = {
    "kind_unknown": ("nosuchkind",), "kind_number": ("5",), "sampler_unknown": ("nosuch",), "sampler_bogus_option": ("bogus",),
    "schedule_bogus_option": ("bogus",), "timesteps_0": ("num_train_timesteps",), "timesteps_negative": ("num_train_timesteps",),
    "timesteps_text": ("num_train_timesteps",), "timesteps_fraction": ("num_train_timesteps",),
    "timesteps_1e10": ("num_train_timesteps",), "cosine_max_beta_2": ("max_beta",), "linear_beta_nan": ("beta_start",),
    "linear_betas_reversed": ("beta",), "unet_channels_empty": ("block_out_channels",), "unet_norm_groups_7": ("norm_groups",),
    "unet_sample_size_negative": ("sample_size",), "unet_in_channels_0": ("in_channels",),
    "unet_layers_negative": ("layers_per_block",), "dit_patch_3": ("patch_size",), "class_label_0": ("num_classes",),
    "class_label_drop_2": ("drop_prob",),
}
for _slug, _args, _config in [
    ("kind_unknown", ("nosuchkind", "x"), {}), ("kind_number", (5, "x"), {}),
    ("sampler_unknown", ("sampler", "nosuch"), {}), ("sampler_bogus_option", ("sampler", "unipc"), {"bogus": 1}),
    ("schedule_bogus_option", ("schedule", "linear"), {"bogus": 1}),
    ("timesteps_0", ("schedule", "linear"), {"num_train_timesteps": 0}),
    ("timesteps_negative", ("schedule", "linear"), {"num_train_timesteps": -5}),
    ("timesteps_text", ("schedule", "linear"), {"num_train_timesteps": "x"}),
    ("timesteps_fraction", ("schedule", "linear"), {"num_train_timesteps": 1.5}),
    ("timesteps_1e10", ("schedule", "linear"), {"num_train_timesteps": 10**10}),
    ("cosine_max_beta_2", ("schedule", "cosine"), {"max_beta": 2}),
    ("linear_beta_nan", ("schedule", "linear"), {"beta_start": math.nan}),
    ("linear_betas_reversed", ("schedule", "linear"), {"beta_start": 0.5, "beta_end": 0.1}),
    ("unet_channels_empty", ("backbone", "unet"), {**TINY_UNET, "block_out_channels": []}),
    ("unet_norm_groups_7", ("backbone", "unet"), {**TINY_UNET, "norm_groups": 7}),
    ("unet_sample_size_negative", ("backbone", "unet"), {**TINY_UNET, "sample_size": -8}),
    ("unet_in_channels_0", ("backbone", "unet"), {**TINY_UNET, "in_channels": 0}),
    ("unet_layers_negative", ("backbone", "unet"), {**TINY_UNET, "layers_per_block": -1}),
    ("dit_patch_3", ("backbone", "dit"), {"input_size": 8, "patch_size": 3, "in_channels": 1, "hidden_size": 64, "depth": 1, "num_heads": 4}),
    ("class_label_0", ("conditioner", "class_label"), {"num_classes": 0}),
    ("class_label_drop_2", ("conditioner", "class_label"), {"num_classes": 10, "drop_prob": 2}),
]:
    _shown = ", ".join([repr(a) for a in _args] + [f"{k}={v!r}" for k, v in _config.items() if TINY_UNET.get(k) != v])
    case(f"build.{_slug}", API, f"diffkit.build({_shown})", build(*_args, **_config), names=_BUILD_NAMES[_slug])

case("registry.get_none", API, "diffkit.get('sampler', None)", lambda ctx: __import__("diffkit").get("sampler", None))
case("registry.names_unknown_kind", API, "diffkit.names('nosuch')", lambda ctx: __import__("diffkit").names("nosuch"))

_PIPELINE_NAMES = {
    "backbone_number": ("backbone",), "backbone_unknown": ("nosuch",), "backbone_config_number": ("backbone",),
    "backbone_bogus_option": ("bogus",), "schedule_number": ("schedule",), "schedule_unknown": ("nosuch",),
    "sampler_unknown": ("nosuch",), "sampler_number": ("sampler",), "parameterization": ("parameterization",),
    "default_steps_0": ("default_steps",), "sample_shape_negative": ("sample_shape",), "sample_shape_text": ("sample_shape",),
    "sample_shape_2d": ("sample_shape",), "objective_bogus": ("bogus",), "classes_mismatch": ("classes",),
    "conditioner_unknown": ("nosuch",), "sampler_options_bogus": ("bogus",),
}
for _slug, _kwargs in [
    ("backbone_number", {"backbone": 5}), ("backbone_unknown", {"backbone": "nosuch"}),
    ("backbone_config_number", {"backbone": ("unet", 5)}),
    ("backbone_bogus_option", {"backbone": ("unet", {**TINY_UNET, "bogus": 1})}), ("schedule_number", {"schedule": 5}),
    ("schedule_unknown", {"schedule": "nosuch"}), ("sampler_unknown", {"sampler": "nosuch"}),
    ("sampler_number", {"sampler": 5}), ("parameterization", {"parameterization": "z"}),
    ("default_steps_0", {"default_steps": 0}), ("sample_shape_negative", {"sample_shape": (1, -8, 8)}),
    ("sample_shape_text", {"sample_shape": "abc"}), ("sample_shape_2d", {"sample_shape": (1, 8)}),
    ("objective_bogus", {"objective": {"bogus": 1}}),
    ("classes_mismatch", {"conditioner": ("class_label", {"num_classes": 5})}),
    ("conditioner_unknown", {"conditioner": "nosuch"}), ("sampler_options_bogus", {"sampler_options": {"bogus": 1}}),
]:
    case(f"Pipeline.{_slug}", API, f"diffkit.Pipeline({', '.join(f'{k}={v!r}' for k, v in _kwargs.items())})",
         make_pipeline(**_kwargs), names=_PIPELINE_NAMES[_slug])


case("sample_api.ok", API, "(control) Pipeline.sample(2, steps=2)", pipeline_sample(), expect="ok",
     verify=finite_tensor((2, 1, 8, 8)))
for _slug, _kwargs, _names in [
    ("n_0", {"n": 0}, ("n",)), ("n_true", {"n": True}, ("n",)), ("n_fraction", {"n": 1.5}, ("n",)),
    ("n_negative", {"n": -1}, ("n",)), ("n_text", {"n": "4"}, ("n",)), ("n_1e8", {"n": 10**8}, ("n",)),
    ("steps_0", {"steps": 0}, ("steps",)), ("steps_fraction", {"steps": 1.5}, ("steps",)),
    ("steps_true", {"steps": True}, ("steps",)), ("steps_5000", {"steps": 5000}, ("steps",)),
    ("guidance_nan", {"guidance": math.nan}, ("guidance",)), ("guidance_inf", {"guidance": math.inf}, ("guidance",)),
    ("guidance_negative", {"guidance": -1.0}, ("guidance",)), ("guidance_1e30", {"guidance": 1e30}, ("guidance",)),
    ("guidance_text", {"guidance": "2"}, ("guidance",)),
    ("generator_2_70", {"generator": 2**70}, ("generator",)), ("generator_negative", {"generator": -1}, ("generator",)),
    ("generator_text", {"generator": "x"}, ("generator",)),
    ("cond_count", {"cond": _labels(1, 2, 3, 4, 5)}, ("5",)), ("cond_class_10", {"cond": _labels(10, 10)}, ("10",)),
    ("cond_class_negative", {"cond": _labels(-1, -1)}, ("-1",)), ("cond_text", {"cond": "a seven"}, ("label",)),
    ("cond_missing", {"cond": None}, ("cond",)),
    ("cond_float_labels", {"cond": _labels(0.5, 1.5)}, ("label",)), ("cond_2d_labels", {"cond": _labels([1], [2])}, ("label",)),
    ("sampler_unknown", {"sampler": "nosuch"}, ("nosuch",)), ("sampler_options_bogus", {"sampler_options": {"bogus": 1}}, ("bogus",)),
    ("spacing_unknown", {"spacing": "nosuch"}, ("nosuch",)), ("precision_bf17", {"precision": "bf17"}, ("bf17",)),
    ("negative_on_class_pipeline", {"negative": ["blurry", "blurry"], "guidance": 2.0}, ("negative",)),
    ("callback_number", {"callback": 5}, ("callback",)),
    ("guidance_rescale_nan", {"guidance_rescale": math.nan, "guidance": 2.0}, ("rescale",)),
]:
    _shown = ", ".join(f"{k}={('<tensor>' if callable(v) else repr(v))}" for k, v in _kwargs.items())
    case(f"sample_api.{_slug}", API, f"Pipeline.sample({_shown})", pipeline_sample(**_kwargs), names=_names)

case("diffkit_sample.ok", API, "(control) diffkit.sample(σ=[1, 0.5])", diffkit_sample(), expect="ok",
     verify=finite_tensor((2, 1, 8, 8)))
_SAMPLE_FN_NAMES = {
    "sigmas_meta": ("meta",), "sigmas_increasing": ("sigma",), "sigmas_nan": ("sigma",), "sigmas_negative": ("sigma",),
    "sigmas_empty": ("sigma",), "sigmas_2d": ("sigma",), "shape_zero": ("shape",), "shape_negative": ("shape",),
    "shape_text": ("shape",), "steps_0": ("steps",), "steps_fraction": ("steps",), "steps_and_sigmas": ("steps",),
    "schedule_unknown": ("nosuch",), "sampler_unknown": ("nosuch",), "dtype_int64": ("dtype",), "device_cuda": ("cuda",),
    "sampler_returns_nan": ("nan",), "sampler_wrong_shape": ("shape",), "denoiser_returns_nan": ("nan",),
    "denoiser_wrong_shape": ("shape",),
}
for _slug, _kwargs in [
    ("sigmas_meta", {"sigmas": meta_sigmas}), ("sigmas_increasing", {"sigmas": [0.5, 1.0]}),
    ("sigmas_nan", {"sigmas": [1.0, math.nan]}), ("sigmas_negative", {"sigmas": [1.0, -0.5]}),
    ("sigmas_empty", {"sigmas": []}), ("sigmas_2d", {"sigmas": [[1.0, 0.5]]}), ("shape_zero", {"shape": (0, 1, 8, 8)}),
    ("shape_negative", {"shape": (-1, 1, 8, 8)}), ("shape_text", {"shape": "abc"}),
    ("steps_0", {"steps": 0, "schedule": "linear"}), ("steps_fraction", {"steps": 1.5, "schedule": "linear"}),
    ("steps_and_sigmas", {"steps": 2, "schedule": "linear", "sigmas": [1.0, 0.5]}),
    ("schedule_unknown", {"steps": 2, "schedule": "nosuch"}), ("sampler_unknown", {"sampler": "nosuch"}),
    ("dtype_int64", {"dtype": "int64"}), ("device_cuda", {"device": "cuda"}),
    ("sampler_returns_nan", {"sampler": nan_sampler}), ("sampler_wrong_shape", {"sampler": wrong_shape_sampler}),
    ("denoiser_returns_nan", {"denoiser": nan_denoiser}), ("denoiser_wrong_shape", {"denoiser": short_denoiser}),
]:
    _action = diffkit_sample(**_kwargs)
    _shown = ", ".join(f"{k}={getattr(v, '__name__', repr(v))}" for k, v in _kwargs.items())
    _expect: Any = cuda_expect if _slug == "device_cuda" else "error"
    case(f"diffkit_sample.{_slug}", API, f"diffkit.sample({_shown})", _action, expect=_expect,
         verify=finite_tensor((2, 1, 8, 8)), names=_SAMPLE_FN_NAMES[_slug])


def _load(**kwargs: Any) -> Callable[[Ctx], Any]:
    def action(ctx: Ctx) -> Any:
        import torch

        import diffkit

        args = {k: (getattr(torch, v[6:]) if isinstance(v, str) and v.startswith("torch.") else v) for k, v in kwargs.items()}
        return diffkit.load_pretrained(ctx.base / "pipeline", **args)

    return action


def _params_dtype(name: str) -> Callable[[Ctx, Any], str | None]:
    def verify(ctx: Ctx, value: Any) -> str | None:
        dtypes = {str(p.dtype) for p in value.parameters()}
        return None if dtypes == {f"torch.{name}"} else f"the parameters are {sorted(dtypes)}, not torch.{name}"

    return verify


case("load.device_cuda", API, "load_pretrained(P, device='cuda') on this machine", _load(device="cuda"), expect=cuda_expect, names=("cuda",))
case("load.dtype_int8", API, "load_pretrained(P, dtype=torch.int8)", _load(dtype="torch.int8"), names=("int8",))
case("load.dtype_int64", API, "load_pretrained(P, dtype=torch.int64)", _load(dtype="torch.int64"), names=("int64",))
case("load.dtype_bool", API, "load_pretrained(P, dtype=torch.bool)", _load(dtype="torch.bool"), names=("bool",))
case("load.dtype_string", API, "load_pretrained(P, dtype='float16') (a string)", _load(dtype="float16"), names=("dtype",))
case("load.dtype_float64", API, "(control) load_pretrained(P, dtype=torch.float64)", _load(dtype="torch.float64"),
     expect="ok", verify=_params_dtype("float64"))
case("load.path_none", API, "load_pretrained(None)", lambda ctx: __import__("diffkit").load_pretrained(None), names=("None",))


def _unet_forward(dtype: str = "float32", channels: int = 1) -> Callable[[Ctx], Any]:
    def action(ctx: Ctx) -> Any:
        import torch

        import diffkit

        torch.manual_seed(0)
        net = diffkit.build("backbone", "unet", **{**TINY_UNET, "num_classes": 0})
        x = torch.randn(2, channels, 8, 8, dtype=getattr(torch, dtype))
        with torch.no_grad():
            return net(x, torch.tensor([10, 500]))

    return action


case("unet.float64_input", API, "float64 input into a float32 UNet (cast or name it)", _unet_forward("float64"),
     expect="either", verify=finite_tensor((2, 1, 8, 8)))
case("unet.wrong_channels", API, "a 3-channel input into a 1-channel UNet", _unet_forward(channels=3))


def _save_into(target: str) -> Callable[[Ctx], Any]:
    def action(ctx: Ctx) -> Any:
        return load_base_pipeline(ctx).save(target)

    return action


case("save.into_user_folder", API, "Pipeline.save into a folder of the user's files", _save_into("mine"),
     setup=write("mine/notes.txt", "mine"), names=("mine",))
case("save.onto_file", API, "Pipeline.save onto an existing file", _save_into("f"), setup=write("f", "x"))
case("save.under_proc", API, "Pipeline.save('/proc/diffkit-reliability')", _save_into("/proc/diffkit-reliability"))
case("save.module_number", API, "diffkit.save_pretrained(5, folder)",
     lambda ctx: __import__("diffkit").save_pretrained(5, ctx.tmp / "out"))


# ====================================================================================================
# non-finite values: training that diverges, samplers and denoisers that return garbage
# ====================================================================================================


def _nan_loss_from(step: int) -> Callable[[Ctx], None]:
    """Set-up: ``Pipeline.loss`` turns NaN from optimizer step ``step`` on (undone after the case)."""

    def setup(ctx: Ctx) -> None:
        from diffkit.pipeline import Pipeline

        original = Pipeline.loss
        calls = {"n": 0}

        def poisoned(self: Any, *args: Any, **kwargs: Any) -> Any:
            loss, parts = original(self, *args, **kwargs)
            calls["n"] += 1
            return (loss * float("nan") if calls["n"] >= step else loss), parts

        Pipeline.loss = poisoned  # type: ignore[method-assign]
        ctx.on_cleanup(lambda: setattr(Pipeline, "loss", original))

    return setup


def finite_outputs(out: str = "R", planted: Sequence[str] = ()) -> Callable[[Ctx, Any], str | None]:
    """Every checkpoint and pipeline left in ``out`` is finite (but the damaged ones the case planted)."""

    def post(ctx: Ctx, value: Any) -> str | None:
        folder = ctx.tmp / out
        if not folder.exists():
            return None
        for sub in [*sorted((folder / "checkpoints").glob("step-*")), folder / "pipeline"]:
            if sub.relative_to(ctx.tmp).as_posix() in planted:
                continue
            if sub.is_dir():
                problem = non_finite_weights(sub)
                if problem:
                    return f"{sub.relative_to(ctx.tmp)} was saved with non-finite weights ({problem})"
        return None

    return post


def _kept_step(step: int) -> Callable[[Ctx, Any], str | None]:
    finite = finite_outputs()

    def post(ctx: Ctx, value: Any) -> str | None:
        if not (ctx.tmp / "R" / "checkpoints" / f"step-{step:09d}").is_dir():
            return f"the last good checkpoint (step {step}) is gone"
        if (ctx.tmp / "R" / "pipeline").exists():
            return "a pipeline was saved from a diverged run"
        return finite(ctx, value)

    return post


case("diverge.nan_loss_cli", NONFINITE, "diffkit train whose loss turns NaN at step 5 (save_every=2)",
     train("train.log_every=1", steps=8), setup=_nan_loss_from(5), names=("step",), post=_kept_step(4), allow_work=True)


def _trainer_on_nan_data(value: float) -> Callable[[Ctx], Any]:
    def action(ctx: Ctx) -> Any:
        import torch

        import diffkit
        from diffkit.training import InMemoryData, TrainConfig, Trainer

        torch.manual_seed(0)
        pipeline = diffkit.Pipeline(backbone=("unet", {**TINY_UNET, "num_classes": 0}), schedule="cosine")
        images = torch.rand(64, 1, 8, 8) * 2 - 1
        images[::2, 0, 0, 0] = value
        config = TrainConfig(steps=6, batch_size=8, save_every=2, warmup_steps=0, log_every=1)
        return Trainer(pipeline, InMemoryData(images), config, out_dir=ctx.tmp / "R", progress=False).train()

    return action


case("diverge.nan_data_trainer", NONFINITE, "Trainer on images holding NaN", _trainer_on_nan_data(math.nan),
     names=("training data", "indices 0, 2"), post=finite_outputs())
case("diverge.inf_data_trainer", NONFINITE, "Trainer on images holding inf", _trainer_on_nan_data(math.inf),
     names=("training data", "indices 0, 2"), post=finite_outputs())
case("diverge.huge_lr", NONFINITE, "train.lr=1 train.grad_clip=0 for 30 steps (diverges or not: never a NaN pipeline)",
     train("train.lr=1", "train.grad_clip=0", "train.warmup_steps=0", "train.save_every=10", steps=30),
     expect="either", verify=finished_at(30), post=finite_outputs(), names=("step",), allow_work=True)
case("diverge.nan_checkpoint_resume", NONFINITE, "--resume --steps 6 from a consistent checkpoint holding NaN everywhere",
     resume(), setup=chain(run(), tensors(f"{_NEWEST}/model.safetensors", lambda v: {k: t * math.nan if t.is_floating_point() else t for k, t in v.items()}),
                           tensors(f"{_NEWEST}/ema.safetensors", lambda v: {k: t * math.nan if t.is_floating_point() else t for k, t in v.items()}),
                           rehash(_NEWEST)),
     expect="either", verify=finished_at(6), post=finite_outputs(planted=(_NEWEST,)), protect=(f"{_OLDER}/*",),
     names=("step",), allow_work=True)
case("sampler_plugin.nan", NONFINITE, "diffkit sample --sampler <a plugin that returns NaN>", sample("--sampler", "nan_sampler"),
     setup=chain(run(), with_sampler_plugin("nan_sampler", nan_sampler)), post=absent("s.png"), names=("nan_sampler",))
case("sampler_plugin.wrong_shape", NONFINITE, "diffkit sample --sampler <a plugin that returns 3×40×24>",
     sample("--sampler", "bad_shape"), setup=chain(run(), with_sampler_plugin("bad_shape", wrong_shape_sampler)),
     post=absent("s.png"), names=("shape",))
case("sample_nan_weights.api", NONFINITE, "Pipeline.sample of a pipeline whose weights were set to NaN in memory",
     lambda ctx: _nan_pipeline(ctx).sample(2, cond=_labels(3, 7)(), steps=2, generator=0), names=("nan",))


def _nan_pipeline(ctx: Ctx) -> Any:
    import torch

    pipeline = load_base_pipeline(ctx)
    with torch.no_grad():
        for parameter in pipeline.backbone.parameters():
            parameter.fill_(math.nan)
    return pipeline


# ====================================================================================================
# the diffkit command itself
# ====================================================================================================

case("cli.unknown_subcommand", CLI, "diffkit trian (a misspelt subcommand: suggest train)", ["trian"], names=("train",))
case("cli.list_unknown_kind", CLI, "diffkit list nosuch", ["list", "nosuch"], names=("nosuch",))
case("cli.list_misspelt_kind", CLI, "diffkit list samplerz", ["list", "samplerz"], names=("sampler",))
case("cli.check_unknown", CLI, "diffkit check nosuch", ["check", "nosuch"], names=("nosuch",))
case("cli.check_bad_option", CLI, "diffkit check -o bad ddim (no =)", ["check", "-o", "bad", "ddim"], names=("bad",))
case("cli.check_unknown_schedule", CLI, "diffkit check schedule:nosuch", ["check", "schedule:nosuch"], names=("nosuch",))
case("cli.check_unknown_kind", CLI, "diffkit check nosuchkind:x", ["check", "nosuchkind:x"], names=("nosuchkind",))
case("cli.check_order_nan", CLI, "diffkit check ddim --order nan", ["check", "ddim", "--quick", "--order", "nan"], names=("order",))
case("cli.check_eta_negative", CLI, "diffkit check ddim -o eta=-1", ["check", "ddim", "--quick", "-o", "eta=-1"], names=("eta",))
case("cli.demo_unknown", CLI, "diffkit demo nosuch", ["demo", "nosuch"], names=("nosuch",))
case("cli.demo_steps_0", CLI, "diffkit demo --steps 0", ["demo", "--steps", "0", "--out", "D"], names=("--steps",))
case("cli.demo_eval_n_0", CLI, "diffkit demo --eval-n 0", ["demo", "--eval-n", "0", "--out", "D"], names=("--eval-n",))
case("cli.sample_no_arguments", CLI, "diffkit sample without arguments", ["sample"], names=("--from",))
case("cli.version", CLI, "(control) diffkit --version", ["--version"], expect="ok",
     verify=lambda ctx, r: None if __import__("diffkit").__version__ in r.stdout + r.stderr else f"no version in {r.stdout!r}")
case("cli.help_plain_text", CLI, "(control) diffkit --help shows no raw Sphinx markup", ["--help"], expect="ok",
     verify=lambda ctx, r: f"raw markup in the help: {r.stdout[:300]!r}" if "``" in r.stdout or ":mod:" in r.stdout else None)
case("cli.process.bad_override", CLI, "python -m diffkit train … train.steps=x (a real process: exit 2, one line)",
     lambda ctx: ctx.subprocess_cli(train("train.steps=x", steps=None)), names=("steps",))
case("cli.process.sample_missing", CLI, "python -m diffkit sample --from missing (a real process)",
     lambda ctx: ctx.subprocess_cli(sample(src="missing")), names=("missing",))
case("cli.process.unknown_subcommand", CLI, "python -m diffkit trian (a real process)",
     lambda ctx: ctx.subprocess_cli(["trian"]), names=("train",))
case("cli.process.out_is_file", CLI, "python -m diffkit train --out <a file> (a real process)",
     lambda ctx: ctx.subprocess_cli(train()), setup=write("R", "mine"), names=("R",))
case("cli.process.pipeline_list", CLI, "python -m diffkit sample --from P with pipeline.json [] (a real process)",
     lambda ctx: ctx.subprocess_cli(sample(src="P")), setup=chain(pipe(), write(_PJ, "[]")), names=("pipeline.json",))
