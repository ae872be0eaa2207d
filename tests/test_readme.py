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
