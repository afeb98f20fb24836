"""``python -m walkit`` is the ``walkit`` command."""

import sys

from .cli import main

sys.exit(main())
