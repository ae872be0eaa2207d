"""The reference must stay numpy-only: importing it may not pull in torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_import_does_not_import_torch():
    # every module of the package, found on disk so a new one cannot be forgotten
    import diffkit_reference

    root = Path(diffkit_reference.__file__).parent
    modules = sorted(p.stem for p in root.glob("*.py") if p.stem != "__init__")
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module('diffkit_reference.' + name)\n"
        "assert 'torch' not in sys.modules, 'diffkit_reference imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
