"""The notebooks' public module ``walkit.simulate`` (its code lives in :mod:`walkit.lab.simulate`)."""

from walkit.lab.simulate import *  # noqa: F403
from walkit.lab.simulate import __all__ as __all__
