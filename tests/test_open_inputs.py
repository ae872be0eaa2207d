"""Property tests where the inputs are open-ended: recipe overrides, user σ grids, registry names.

Each property is stated against an independent model of the rule (a plain dict walk, a sorted
list, the documented name pattern), never against the code's own earlier output.
"""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from diffkit.errors import ConfigError, DiffkitError, UnknownNameError
from diffkit.recipes.base import apply_overrides, parse_value
from diffkit.registry import Origin, Registrar
from diffkit.schedules.spacings import user_sigmas

# -- KEY=VALUE overrides ----------------------------------------------------------------------------

keys = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
json_leaves = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=64) | st.text("abcxyz ._-", max_size=6)
)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
recipes = st.recursive(
    st.dictionaries(keys, json_values, min_size=1, max_size=4),
    lambda inner: st.dictionaries(keys, inner | json_values, min_size=1, max_size=4),
    max_leaves=12,
)


def _leaf_paths(node: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in node.items():
        out += _leaf_paths(value, (*prefix, key)) if isinstance(value, dict) else [(*prefix, key)]
    return out


def _get(node: dict, path: tuple[str, ...]):
    for part in path:
        node = node[part]
    return node


@given(recipe=recipes, data=st.data(), value=json_values)
def test_an_override_sets_exactly_its_key_and_leaves_the_recipe_it_was_given(recipe, data, value):
    path = data.draw(st.sampled_from(_leaf_paths(recipe)))
    before = copy.deepcopy(recipe)
    result = apply_overrides(recipe, [".".join(path) + "=" + json.dumps(value)])
    assert recipe == before  # the argument is never changed
    assert _get(result, path) == value
    expected = copy.deepcopy(before)
    _get(expected, path[:-1])[path[-1]] = value
    assert result == expected  # and nothing else moved


@given(recipe=recipes, key=keys, value=json_values)
def test_an_override_of_a_key_the_recipe_lacks_is_refused_naming_it(recipe, key, value):
    if key in recipe:
        return
    with pytest.raises(UnknownNameError, match=re.escape(repr(key))):
        apply_overrides(recipe, [f"{key}={json.dumps(value)}"])


@given(text=st.text(max_size=12))
def test_malformed_overrides_are_config_errors_never_other_exceptions(text):
    try:
        apply_overrides({"train": {"steps": 1}}, [text])
    except DiffkitError:
        pass
    if "=" not in text or text.startswith("="):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            apply_overrides({"train": {"steps": 1}}, [text])


@given(value=json_values)
def test_values_read_as_json_round_trip(value):
    assert parse_value(json.dumps(value)) == value


@given(text=st.text(alphabet="abcdefghij _-/", min_size=1, max_size=10))
def test_text_that_is_not_json_stays_text(text):
    try:
        json.loads(text)
    except ValueError:
        assert parse_value(text) == text


# -- user σ grids --------------------------------------------------------------------------------------

positive = st.floats(min_value=1e-6, max_value=1e4, allow_nan=False)


@given(levels=st.lists(positive, min_size=1, max_size=12, unique=True), end_at_zero=st.booleans())
def test_a_strictly_decreasing_grid_is_kept_exactly_with_a_final_zero(levels, end_at_zero):
    levels = sorted(levels, reverse=True)
    given_levels = [*levels, 0.0] if end_at_zero else levels
    grid = user_sigmas(given_levels)
    assert grid.dtype == torch.float64 and grid.tolist() == [*levels, 0.0]


@given(levels=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=8))
def test_any_other_grid_is_a_config_error_naming_the_entry(levels):
    valid = (
        all(math.isfinite(v) and v >= 0 for v in levels)
        and all(a > b for a, b in zip(levels, levels[1:]))
        and any(v > 0 for v in levels)
    )
    if valid:
        assert user_sigmas(levels).tolist()[: len(levels)] == levels
    else:
        with pytest.raises(ConfigError, match=r"sigmas"):
            user_sigmas(levels)


# -- registry names ------------------------------------------------------------------------------------

NAME_RULE = re.compile(r"[a-z][a-z0-9_.\-]*")  # as documented on Registrar.add


@given(name=st.text(alphabet="aZ09_.-é :/\n", max_size=8))
@example(name="ddim\n")  # `$` also matches before a final newline: the rule needs fullmatch
def test_registry_names_follow_the_documented_rule(name):
    registrar = Registrar("sampler", Origin("fuzz", "diffkit-fuzz", "1.0"))
    if NAME_RULE.fullmatch(name):
        registrar.add(name, lambda *args, **kwargs: None)
        assert [entry.name for entry in registrar.staged] == [name]
    else:
        with pytest.raises(ConfigError, match="is not valid"):
            registrar.add(name, lambda *args, **kwargs: None)
        assert registrar.staged == []
