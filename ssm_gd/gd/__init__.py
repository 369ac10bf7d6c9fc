"""The references a trained model is compared with, re-exported as one namespace ``ssm_gd.gd``.

* :mod:`ssm_gd.gd.squared` — GD on the squared loss: the accumulators, explicit K-step GD (query and
  every prefix), least squares, ridge, the best step size (closed form, grid, refined grid);
* :mod:`ssm_gd.gd.weighted` — preconditioned and sample-weighted GD (what one layer of linear
  attention and H3 implement), the optimal preconditioner, the best weights;
* :mod:`ssm_gd.gd.classification` — cross-entropy GD and its best step size, multinomial logistic
  regression and its best penalty (classification).

All functions are pure and batched over a leading task axis ``B``; ``from ssm_gd import gd;
gd.predict(...)`` reaches every one of them.
"""

from __future__ import annotations

from ssm_gd.gd import classification as _classification_module
from ssm_gd.gd import squared as _squared_module
from ssm_gd.gd import weighted as _weighted_module
from ssm_gd.gd.classification import *  # noqa: F403
from ssm_gd.gd.squared import *  # noqa: F403
from ssm_gd.gd.weighted import *  # noqa: F403

__all__ = sorted(
    {*_squared_module.__all__, *_weighted_module.__all__, *_classification_module.__all__}
)
