"""The command line as a new user meets it: version, help, errors, suggestions, summaries."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import diffkit
from diffkit.cli.commands import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_printed_and_matches_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffkit {diffkit.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == diffkit.__version__


@pytest.mark.parametrize("command", [[], ["list"], ["check"], ["train"], ["sample"], ["demo"]])
def test_help_is_plain_text_without_sphinx_markup(capsys, command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: diffkit")
    assert not re.search(r"``|:mod:|:func:|:class:|:meth:", text), text


def test_an_unknown_command_suggests_close_matches(capsys):
    assert main(["trian", "--recipe", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffkit: error: unknown command 'trian'") and "did you mean 'train'" in err


@pytest.mark.parametrize("kind", ["sampler", "samplers"])
def test_list_takes_a_kind_singular_or_plural(capsys, kind):
    assert main(["list", kind]) == 0
    assert capsys.readouterr().out.startswith("samplers (")


def test_a_diffkit_error_is_one_line_without_traceback_and_debug_shows_it():
    command = [sys.executable, "-m", "diffkit", "sample", "--from", "/nonexistent/run", "--out", "x.png"]
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("diffkit: error:") and len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run([*command[:3], "--debug", *command[3:]], capture_output=True, text=True)
    assert "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_train_overrides_may_stand_anywhere_on_the_line(tmp_path):
    out = tmp_path / "R"
    assert main(["train", "--recipe", "digits", "train.batch_size=8", "--out", str(out), "--steps", "2",
                 "sample.n=2", "--no-progress", "sample.steps=1"]) == 0
    recorded = (out / "recipe.json").read_text()
    assert '"batch_size": 8' in recorded and '"n": 2' in recorded


def test_check_summary_counts_skipped_checks(capsys):
    assert main(["check", "euler", "--quick"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    skipped = out.count("  SKIP ")
    assert re.search(r"\d+ checks: \d+ passed", head)
    assert skipped >= 1  # euler declares no twin: its parity check does not apply
    assert f"{skipped} skipped" in head and "all passed" not in out
