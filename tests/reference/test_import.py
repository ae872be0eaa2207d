"""The reference must stay numpy-only: importing it may not pull in torch."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_import_torch():
    code = (
        "import sys\n"
        "import diffkit_reference\n"
        "import diffkit_reference.schedules, diffkit_reference.spacing, diffkit_reference.forward\n"
        "import diffkit_reference.reverse, diffkit_reference.samplers\n"
        "assert 'torch' not in sys.modules, 'diffkit_reference imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
