"""The import paths of diffkit 0.1 that the README named still work for one release: each old
name is the very object at its new home, and using it says where that is (DeprecationWarning)."""

from __future__ import annotations

import importlib

import pytest

from diffkit.moved import moved_names

# (old module, name, new module) for every public name the 0.1 README pointed at
MOVED = [
    ("diffkit.data", "DigitsDataset", "diffkit.demos.digits"),
    ("diffkit.data", "ShapesDataset", "diffkit.demos.shapes"),
    ("diffkit.data", "ShapesConfig", "diffkit.demos.shapes"),
    ("diffkit.data", "ImageFolder", "diffkit.io.image_folder"),
    ("diffkit.data", "load_digits", "diffkit.demos.digits"),
    ("diffkit.metrics", "ShapesEvaluator", "diffkit.demos.shapes"),
    ("diffkit.metrics", "class_accuracy", "diffkit.demos.digits"),
    ("diffkit.metrics", "digits_fid", "diffkit.demos.digits"),
    ("diffkit.metrics", "frechet_distance", "diffkit.demos.frechet"),
    ("diffkit.imaging", "save_png", "diffkit.io.imaging"),
    ("diffkit.imaging", "save_gif", "diffkit.io.imaging"),
    ("diffkit.converters", "DiffusersConverter", "diffkit.io.converters"),
    ("diffkit.converters", "DIFFUSERS_FORMATS", "diffkit.io.converters"),
    ("diffkit.schedules", "optimize_sigmas", "diffkit.sampling.optimize"),
    ("diffkit.schedules", "SigmaOptimization", "diffkit.sampling.optimize"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_an_old_path_gives_the_same_object_and_names_the_new_one(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        obj = getattr(importlib.import_module(old), name)
    assert obj is getattr(importlib.import_module(new), name)


def test_from_import_of_an_old_path_works():
    with pytest.warns(DeprecationWarning, match="diffkit.demos.digits"):
        from diffkit.data import DigitsDataset  # noqa: PLC0415 - the old spelling is the point
    from diffkit.demos.digits import DigitsDataset as new

    assert DigitsDataset is new


def test_an_unknown_name_is_still_an_attribute_error():
    data = importlib.import_module("diffkit.data")
    with pytest.raises(AttributeError, match="'diffkit.data' has no attribute 'Nope'"):
        data.Nope  # noqa: B018
    imaging = importlib.import_module("diffkit.imaging")
    with pytest.raises(AttributeError, match="_private"):
        imaging._private  # noqa: B018


def test_a_whole_module_shim_serves_only_what_the_new_module_has(recwarn):
    getattr_ = moved_names("old.place", "diffkit.io.imaging")
    with pytest.raises(AttributeError, match="'old.place' has no attribute 'no_such_function'"):
        getattr_("no_such_function")
    assert not [w for w in recwarn if w.category is DeprecationWarning]  # nothing to point at
