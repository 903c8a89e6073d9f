"""``python -m shieldtune``: the ``shieldtune`` command."""

import sys

from shieldtune.cli import main

sys.exit(main())
