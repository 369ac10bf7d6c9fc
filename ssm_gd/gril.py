"""Moved to :mod:`ssm_gd.seq.gril`; this path is an alias of it for one release."""

import sys
import warnings

from ssm_gd.seq import gril as _moved

warnings.warn(
    "ssm_gd.gril moved to ssm_gd.seq.gril; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
