"""Gathering rollout data across ranks, so that TARS pairing and baselines see every rollout of a
question even when its group spans ranks (docs/design.md §3)."""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_lists(local: List[Any]) -> Tuple[List[Any], int]:
    """All ranks' lists concatenated in rank order, and where this rank's items start.

    Items are pickled between the job's own ranks (CPU tensors included); every rank must call this.
    """
    rank, size = world()
    if size == 1:
        return list(local), 0
    parts: List[List[Any]] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(parts, list(local))
    offset = sum(len(p) for p in parts[:rank])
    return [x for p in parts for x in p], offset


def shutdown(succeeded: bool) -> None:
    """Tear the process group down before interpreter exit, after a successful run on every rank.

    Gloo's worker threads still holding work at interpreter finalisation abort the process ("terminate
    called without an active exception", pytorch/pytorch PR 179291): seen now and then at the end of a
    finished 2-rank CPU run. The barrier makes every rank finish its last collective first. After a failure
    the barrier is skipped (another rank may never reach it) and the group is only destroyed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if succeeded:
        dist.barrier()
    dist.destroy_process_group()


def run_then_shutdown(main_fn: Callable[[List[str]], Any], argv: List[str]) -> Any:
    """``main_fn(argv)`` (an ms-swift pipeline entry), then ``shutdown`` with whether it succeeded."""
    succeeded = False
    try:
        result = main_fn(argv)
        succeeded = True
        return result
    finally:
        shutdown(succeeded)
