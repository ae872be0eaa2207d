"""The README's Python code blocks run as written, in order, in one namespace."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = [
    textwrap.dedent(block)  # blocks inside a numbered list are indented
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
]


def test_every_readme_code_block_runs(tmp_path, monkeypatch):
    assert len(BLOCKS) >= 3
    monkeypatch.chdir(tmp_path)  # files the examples write land in a temporary folder
    namespace: dict = {"__name__": "readme_example"}
    for index, block in enumerate(BLOCKS):  # later blocks may use what earlier ones define
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    assert (tmp_path / "my-digits" / "pipeline.json").is_file()
    assert (tmp_path / "my-dit-diffkit" / "pipeline.json").is_file()
    # "Run a diffusers checkpoint with diffkit": its command for the folder the block saved, as written
    import shlex

    from diffkit.cli.commands import main

    commands = re.findall(r"^diffkit (?:sample --from |train --recipe finetune pipeline\.pretrained=)my-dit .*$",
                          README.read_text(encoding="utf-8"), flags=re.M)
    assert len(commands) == 2
    _class_folders(tmp_path / "my-images")  # the user's images: two classes
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    assert (tmp_path / "dit.png").is_file()
    import diffkit

    tuned = diffkit.load_pretrained(tmp_path / "my-dit-run" / "pipeline")
    assert tuned.sample(2, cond=[0, 1], steps=2).shape == (2, 3, 16, 16)


def _class_folders(root: Path) -> None:
    """Four 16×16 PNGs in each of two class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
