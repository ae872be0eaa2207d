"""``python -m diffkit.cli`` runs the ``diffkit`` command."""

import sys

from diffkit.cli.commands import main

sys.exit(main())
