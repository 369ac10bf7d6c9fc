"""Moved to :mod:`ssm_gd.seq` (``mixers``, ``models``, ``generate``); this path re-exports their
names for one release."""

import warnings

from ssm_gd.seq.generate import _sample, generate, prefill  # noqa: F401
from ssm_gd.seq.mixers import (  # noqa: F401
    CHOICES,
    FACTORIES,
    MIXERS,
    RECURRENT,
    VARIANTS,
    Attention,
    DiagonalSSM,
    Griffin,
    make_mixer,
    rotary,
)
from ssm_gd.seq.models import HEADS, Block, Model, match_d_model, parameter_count  # noqa: F401

warnings.warn(
    "ssm_gd.models moved to ssm_gd.seq.models, ssm_gd.seq.mixers and ssm_gd.seq.generate; the old "
    "path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
