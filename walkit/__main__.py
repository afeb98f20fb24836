"""``python -m walkit`` is the ``walkit`` command."""

import sys

from walkit.cli import main

sys.exit(main())
