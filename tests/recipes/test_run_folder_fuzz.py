"""Fuzzing the run folder's records: random JSON, truncations and wrong types in ``meta.json``,
``recipe.json`` and ``run.json`` make resuming either succeed or raise a ``DiffkitError``,
never anything else, never hang, and never change the damaged file.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffkit.cli.commands import main
from diffkit.errors import DiffkitError
from diffkit.recipes import train_recipe
from tests.recipes.test_run_folder import _unfinished_run
from tests.timeouts import time_bound

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="alarm")]

SECONDS_PER_CASE = 30

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def damaged_versions(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random JSON, a truncation of the valid file, or the valid object with one key's value replaced."""
    record = json.loads(valid)
    random_json = json_values.map(lambda v: json.dumps(v).encode())
    truncated = st.integers(min_value=0, max_value=max(0, len(valid) - 1)).map(lambda n: valid[:n])
    replaced = st.tuples(st.sampled_from(sorted(record)), json_values).map(
        lambda kv: json.dumps({**record, kv[0]: kv[1]}).encode()
    )
    huge = st.sampled_from(sorted(record)).map(lambda k: json.dumps({**record, k: 10**400}).encode())
    return st.one_of(random_json, truncated, replaced, huge, st.binary(max_size=64))


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    return _unfinished_run(tmp_path_factory.mktemp("fuzz"))


def _copy(run: Path) -> Path:
    folder = Path(tempfile.mkdtemp()) / "R"
    shutil.copytree(run, folder)
    return folder


def _all_files(folder: Path) -> set[bytes]:
    return {p.read_bytes() for p in folder.rglob("*") if p.is_file()}


FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_a_fuzzed_newest_meta_json_is_skipped_or_named(unfinished, data):
    folder = _copy(unfinished)
    try:
        meta = folder / "checkpoints" / "step-000000010" / "meta.json"
        damaged = data.draw(damaged_versions(meta.read_bytes()))
        meta.write_bytes(damaged)
        recipe = json.loads((folder / "recipe.json").read_text())
        with time_bound(SECONDS_PER_CASE):
            try:
                train_recipe(recipe, folder, resume=True, progress=False)
            except DiffkitError as error:
                assert str(error)
        assert damaged in _all_files(folder)  # kept (in place or set aside), never rewritten
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.mark.parametrize("record", ["recipe.json", "run.json"])
@FUZZ
@given(data=st.data())
def test_a_fuzzed_run_record_is_a_named_error_and_stays_untouched(unfinished, capsys, record, data):
    folder = _copy(unfinished)
    try:
        path = folder / record
        damaged = data.draw(damaged_versions(path.read_bytes()))
        path.write_bytes(damaged)
        with time_bound(SECONDS_PER_CASE):
            status = main(["train", "--out", str(folder), "--resume", "--no-progress"])
        err = capsys.readouterr().err
        if status != 0:
            assert status == 2 and err.strip().splitlines()[-1].startswith("diffkit: error:")
            assert path.read_bytes() == damaged
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
