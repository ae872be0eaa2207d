"""The ``diffkit`` command, including plugins found through real entry points on sys.path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffkit.cli.commands import main


def fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution: a dist-info folder with a ``diffkit`` entry point."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[diffkit]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


def run_cli(*args: str, path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    if path is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(path), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "diffkit", *args], capture_output=True, text=True, env=environ)


GOOD_PLUGIN = """
    import diffkit
    from diffkit.samplers import ddim

    def my_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
        '''Euler on the probability-flow ODE (borrowing DDIM with eta=0).'''
        return ddim(denoiser, x, sigmas, cond=cond, callback=callback)

    @diffkit.hookimpl
    def diffkit_register_samplers(samplers):
        samplers.add("my_euler", my_euler)
"""


def test_list_shows_a_plugin_broken_at_import_and_keeps_working(tmp_path):
    fake_distribution(tmp_path, "diffkit-broken", "diffkit_broken", "raise ImportError('needs libfoo')\n")
    fake_distribution(tmp_path, "diffkit-good", "diffkit_good", GOOD_PLUGIN)
    result = run_cli("list", path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "broken plugins" in result.stdout
    assert "diffkit_broken (diffkit-broken 1.0): import failed: ImportError: needs libfoo" in result.stdout
    assert "my_euler" in result.stdout and "diffkit-good 1.0" in result.stdout
    assert "ddim" in result.stdout


def test_strict_mode_makes_the_broken_plugin_an_error(tmp_path):
    fake_distribution(tmp_path, "diffkit-broken", "diffkit_broken", "raise ImportError('needs libfoo')\n")
    result = run_cli("list", path=tmp_path, DIFFKIT_STRICT_PLUGINS="1")
    assert result.returncode == 2 and "needs libfoo" in result.stderr


def test_check_a_third_party_sampler_found_through_its_entry_point(tmp_path):
    fake_distribution(tmp_path, "diffkit-good", "diffkit_good", GOOD_PLUGIN)
    result = run_cli("check", "my_euler", "--quick", path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sampler my_euler [diffkit_good (diffkit-good 1.0)]" in result.stdout
    assert result.stdout.count("sampler my_euler [") == 1
    assert "FAIL" not in result.stdout


def test_list_one_kind(capsys):
    assert main(["list", "schedules"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("schedules (") and "cosine" in out and "samplers" not in out


def test_unknown_kind_and_name_are_errors_with_suggestions(capsys):
    assert main(["list", "samplerz"]) == 2
    assert "did you mean 'sampler'" in capsys.readouterr().err
    assert main(["check", "dddim"]) == 2
    assert "did you mean 'ddim'" in capsys.readouterr().err


def test_check_exit_status_reflects_the_result(capsys):
    assert main(["check", "ddim", "--quick"]) == 0
    assert "no check failed" in capsys.readouterr().out
    assert main(["check", "schedule:cosine"]) == 0


def test_check_passes_sampler_options(capsys):
    assert main(["check", "ddim", "--quick", "-o", "eta=1.0"]) == 0
    assert "stochastic)" in capsys.readouterr().out
    assert main(["check", "ddpm", "--quick", "-o", "variance=large"]) == 0
    assert main(["check", "ddim", "-o", "etta=1"]) == 2
    assert "did you mean 'eta'" in capsys.readouterr().err
    assert main(["check", "ddim", "-o", "eta"]) == 2


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def _example_plugin_installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("diffkit-example-sampler")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _example_plugin_installed() and not os.environ.get("CI"),
    reason="the example plugin is not installed (the README's test command installs it; CI always does)",
)
def test_the_example_plugin_package_is_listed_with_its_distribution():
    result = run_cli("list", "samplers")
    assert "example_heun" in result.stdout and "diffkit-example-sampler" in result.stdout


def test_check_of_a_name_from_a_broken_plugin_points_at_the_plugin(tmp_path):
    fake_distribution(tmp_path, "diffkit-broken", "diffkit_broken", "raise SyntaxError('invalid syntax')\n")
    result = run_cli("check", "broken_sampler", path=tmp_path)
    assert result.returncode == 2
    assert "failed to load and may provide it: diffkit_broken (diffkit-broken 1.0)" in result.stderr
