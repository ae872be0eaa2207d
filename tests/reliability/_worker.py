"""``python -m tests.reliability._worker SESSION FD``: the process that runs cases (see :mod:`.harness`)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.reliability.harness import worker_main

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.reliability._worker SESSION FD (started by python -m tests.reliability)")
    worker_main(Path(sys.argv[1]), int(sys.argv[2]))
