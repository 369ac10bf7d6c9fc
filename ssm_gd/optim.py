"""The one optimiser factory (core): gradient clipping, then AdamW on a warmup + cosine schedule,
optionally with parameter groups that take their own peak rate and weight decay.

Every trainer of the project builds its optimiser here: the paper's regression and classification
runs (the recurrence ``Λ`` as its own group, :mod:`ssm_gd.train`) and the sequence experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import optax

from ssm_gd import validate

__all__ = ["adamw", "schedule"]


def schedule(peak: float, steps: int, warmup: int, final_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup`` steps, then a cosine decay to
    ``peak · final_fraction`` at step ``steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=steps,
        end_value=peak * final_fraction,
    )


def adamw(
    lr: float,
    steps: int,
    *,
    warmup: int,
    final_fraction: float = 0.0,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    groups: Mapping[str, tuple[float, float]] | None = None,
    label: Callable[[tuple], str] | None = None,
) -> optax.GradientTransformation:
    """Clip the global gradient norm to ``clip_norm``, then AdamW with peak rate ``lr`` and
    ``weight_decay`` on :func:`schedule` (``warmup`` steps, cosine to ``lr · final_fraction`` at
    ``steps``). The rate is a value of the optimiser's state, not a constant of the compiled
    step: a sweep over rates compiles its training step once.

    ``groups`` ``{name: (peak lr, weight decay)}`` with ``label`` ``(parameter path) → name or
    "default"``: each named group gets its own AdamW on the same schedule shape (an
    ``optax.multi_transform``); the rest (``"default"``) takes ``lr`` and ``weight_decay``.
    """
    lr = validate.positive_number("lr", lr)
    steps = validate.positive_int("steps", steps)
    warmup = validate.non_negative_int("warmup", warmup)

    unit = schedule(1.0, steps, warmup, final_fraction)

    def one(peak, decay):
        # optax.adamw's steps, with the peak rate held in the optimiser's state (an array) rather
        # than in the program: runs that differ only in their rate share one compiled program.
        return optax.chain(
            optax.scale_by_adam(),
            optax.add_decayed_weights(decay),
            optax.scale_by_schedule(unit),
            optax.inject_hyperparams(optax.scale)(step_size=-peak),
        )

    if not groups:
        inner = one(lr, weight_decay)
    else:
        if label is None:
            raise ValueError("groups needs label, the function that names each parameter's group")
        transforms = {"default": one(lr, weight_decay)}
        transforms.update({name: one(*values) for name, values in groups.items()})

        def labels(params):
            return jax.tree_util.tree_map_with_path(lambda path, _: label(path), params)

        inner = optax.multi_transform(transforms, labels)
    return optax.chain(optax.clip_by_global_norm(clip_norm), inner)
