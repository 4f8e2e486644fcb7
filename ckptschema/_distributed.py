"""JAX's multi-controller runtime as ckptschema uses it: arrays that span processes, and steps taken together.

A save of a tree whose arrays span processes (`spans_processes`) is one `Collective`: every
process runs the same steps in the same order, and each step ends at a barrier of JAX's
own distributed runtime (``jax.distributed``'s coordination service: no XLA computation,
no device collective). At a step's end every process publishes its outcome (a short
string, or its error) in the runtime's key-value store; after the barrier each reads all
of them, so one process's failure makes the step fail in every process, with the same
message, instead of leaving the others waiting. Each process enters every barrier, also
after a failure of its own: no code path runs a barrier that only some processes enter.

A process that dies, or never calls `save`, makes the others' barrier time out after
``CKPTSCHEMA_BARRIER_TIMEOUT`` seconds (default `BARRIER_TIMEOUT`), with an error.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import jax

from ._errors import CkptSchemaError

__all__ = ["BARRIER_TIMEOUT", "Collective", "spans_processes"]

#: Seconds a process waits at a barrier for the others (``CKPTSCHEMA_BARRIER_TIMEOUT`` overrides it).
BARRIER_TIMEOUT = 600.0

#: Collectives started by this process so far: every process counts the same ones, in the same order.
_STARTED = itertools.count()


def spans_processes(leaf: Any) -> bool:
    """Whether `leaf` is a `jax.Array` whose devices are not all this process's own.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> spans_processes(jnp.zeros(3)), spans_processes(np.zeros(3))
        (False, False)
    """
    return isinstance(leaf, jax.Array) and not leaf.is_fully_addressable


class Collective:
    """One operation that every process runs together, as a sequence of named steps.

    Example (in every process of a ``jax.distributed`` run)::

        group = Collective("ckpt/")
        tokens = group.together("begin", lambda: "abc" if group.process == 0 else "")
        assert tokens[0] == "abc"
    """

    def __init__(self, where: str) -> None:
        from jax._src import distributed  # the runtime's client: JAX has no public handle on it

        self.where = where
        self.client: Any = distributed.global_state.client
        if self.client is None:
            raise CkptSchemaError(
                f"{where}: the tree has arrays that span processes, but jax.distributed is not initialized in "
                f"this process; call jax.distributed.initialize() in every process first"
            )
        self.process, self.count = jax.process_index(), jax.process_count()
        self.number = next(_STARTED)
        self.prefix = f"ckptschema/{self.number}"
        self.steps = 0
        self.timeout_ms = int(1000 * _barrier_timeout())

    def together(self, step: str, work: Callable[[], str]) -> list[str]:
        """Run `work` here, wait for every process to finish its own, and return every process's result.

        Raises:
            CkptSchemaError: in every process, if `work` failed in any (this process's own
                error is raised as it is), or if a process did not reach the step in time.
        """
        error: BaseException | None = None
        try:
            outcome = {"ok": work()}
        except BaseException as e:  # published, so that the others stop too; raised below
            error = e
            outcome = {"error": f"{type(e).__name__}: {e}" if not isinstance(e, CkptSchemaError) else str(e)}
        key = f"{self.prefix}/{step}"
        try:
            self.client.key_value_set(f"{key}/{self.process}", json.dumps(outcome))
            self.client.wait_at_barrier(f"{key}/barrier", self.timeout_ms)
            outcomes = [
                json.loads(self.client.blocking_key_value_get(f"{key}/{p}", self.timeout_ms)) for p in range(self.count)
            ]
        except Exception as e:  # the runtime's own errors: a process died, or never came
            if error is not None:
                raise error from None
            raise CkptSchemaError(
                f"{self.where}: not every process reached step {step!r} of the save within "
                f"{self.timeout_ms / 1000:g} s ({type(e).__name__}: {_first_line(e)}): a process failed or was "
                f"killed, or did not call save with the same path; the previous checkpoint is untouched"
            ) from e
        self.steps += 1
        if self.steps == 1 and self.process == 0 and self.number > 0:
            # every process is past the previous collective's last step: its keys are read no more
            self.client.key_value_delete(f"ckptschema/{self.number - 1}/")
        if error is not None:
            raise error
        failed = [(p, o["error"]) for p, o in enumerate(outcomes) if "error" in o]
        if failed:
            process, message = failed[0]
            raise CkptSchemaError(f"{self.where}: the save failed in process {process} of {self.count}: {message}")
        return [o["ok"] for o in outcomes]


def _barrier_timeout() -> float:
    text = os.environ.get("CKPTSCHEMA_BARRIER_TIMEOUT")
    if text is None:
        return BARRIER_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise CkptSchemaError(f"CKPTSCHEMA_BARRIER_TIMEOUT={text!r} must be a positive number of seconds")
    return seconds


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]
