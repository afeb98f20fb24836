"""The notebooks' public module ``walkit.plots`` (its code lives in :mod:`walkit.lab.plots`)."""

from walkit.lab.plots import *  # noqa: F403
from walkit.lab.plots import __all__ as __all__
