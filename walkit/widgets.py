"""The notebooks' public module ``walkit.widgets`` (its code lives in :mod:`walkit.lab.widgets`)."""

from walkit.lab.widgets import *  # noqa: F403
from walkit.lab.widgets import __all__ as __all__
