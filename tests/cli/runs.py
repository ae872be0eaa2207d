"""``diffkit train`` run in-process, for the tests that read what it wrote."""

from __future__ import annotations

from pathlib import Path

from diffkit.cli.commands import main


def trained(out: Path, recipe: str, steps: int, *args: str) -> Path:
    """``out``, once ``diffkit train --recipe <recipe> --steps <steps> --out <out> --no-progress <args>`` succeeded."""
    assert main(["train", "--recipe", recipe, "--steps", str(steps), "--out", str(out), "--no-progress", *args]) == 0
    return out
