"""One run over several processes (``jax.distributed``): the hosts of a TPU pod slice or of GPU
nodes, or 2 processes on one machine (how the tests run it).

:mod:`experiments.launch` starts the processes and tells each one, in its environment, where the
coordinator listens, how many processes there are and which one it is (:data:`COORDINATOR`,
:data:`PROCESSES`, :data:`PROCESS_ID`). An experiment that runs over several processes calls
:func:`initialize` before anything touches a device; JAX then sees every process's devices
(``jax.devices()``) and the trainer's mesh (:func:`ssm_gd.trainer.batch_sharding`) spans them all:
the batch is split over every device, the parameters are replicated, and every process runs the
same program on the same numbers. Process 0 alone writes the run's files (:func:`is_writer`);
a checkpoint is orbax's multi-process save, to which every process contributes. The run folder
must be one folder that every process sees (a shared file system): every process reads the
checkpoint, ``config.json`` and ``history.jsonl`` on resume.

On the CPU, arrays cross processes through gloo (``jax_cpu_collectives_implementation``), which
:func:`initialize` selects; GPUs and TPUs use their own collectives.
"""

from __future__ import annotations

import os

import jax

__all__ = ["COORDINATOR", "PROCESSES", "PROCESS_ID", "agree", "initialize", "is_writer", "joined",
           "launched", "sync"]  # fmt: skip

#: ``host:port`` of process 0's coordinator.
COORDINATOR = "SSM_GD_COORDINATOR"
#: The number of processes of the run.
PROCESSES = "SSM_GD_NUM_PROCESSES"
#: This process's index, 0 … processes − 1.
PROCESS_ID = "SSM_GD_PROCESS_ID"


def launched() -> bool:
    """Whether this process was started as one of several (:data:`COORDINATOR` is set)."""
    return bool(os.environ.get(COORDINATOR))


def _count(name: str, low: int, high: int | None = None) -> int:
    text = os.environ.get(name, "")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        accepted = f"an integer ≥ {low}" + ("" if high is None else f" and ≤ {high}")
        raise ValueError(f"environment variable {name} must be {accepted}; got {text!r}")
    return value


def initialize(timeout: int = 120) -> bool:
    """Join the other processes of the run when this one was launched as one of several (else do
    nothing); return whether it did. Call it before anything touches a device. ``timeout``: the
    seconds to wait for every process to join."""
    if not launched():
        return False
    if joined():
        return True
    processes = _count(PROCESSES, 1)
    process_id = _count(PROCESS_ID, 0, processes - 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[COORDINATOR],
        num_processes=processes,
        process_id=process_id,
        initialization_timeout=timeout,
    )
    return True


def joined() -> bool:
    """Whether :func:`initialize` joined this process to others."""
    return jax.distributed.is_initialized()


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; the only one in a plain run)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the point named ``name`` (nothing to wait for in a plain
    run): what process 0 wrote before it is there for all after it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
    """Process 0's ``value`` (an integer) in every process: a number measured on each, such as a
    step count from a timing, that all must share (the value itself in a plain run)."""
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))
