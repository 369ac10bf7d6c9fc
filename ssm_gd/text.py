"""Moved to :mod:`ssm_gd.seq.text`; this path is an alias of it for one release."""

import sys
import warnings

from ssm_gd.seq import text as _moved

warnings.warn(
    "ssm_gd.text moved to ssm_gd.seq.text; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
