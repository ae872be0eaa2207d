"""``python -m diffkit`` runs the ``diffkit`` command."""

import sys

from diffkit.cli.commands import main

sys.exit(main())
