"""``python -m diffkit`` runs the ``diffkit`` command."""

import sys

from diffkit.cli import main

sys.exit(main())
