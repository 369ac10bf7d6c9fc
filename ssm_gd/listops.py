"""Moved to :mod:`ssm_gd.seq.listops`; this path is an alias of it for one release."""

import sys
import warnings

from ssm_gd.seq import listops as _moved

warnings.warn(
    "ssm_gd.listops moved to ssm_gd.seq.listops; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
