"""Generation through ms-swift's engines: one code path, the backend chosen by flag (docs/design.md §6).

``transformers``: ``TransformersEngine`` (CPU, or a GPU without vLLM); ``vllm``: ``VllmEngine`` with the
original's evaluation settings (docs/original.md §6.1: max_model_len 6400, gpu_memory_utilization 0.45, one
audio per prompt). A LoRA checkpoint is applied per request, so the same engine also answers with the
adapter off (the text-only baseline); for an architecture whose vLLM model cannot apply LoRA (Qwen2-Audio in
vLLM 0.32) the adapter is merged into the base once per adapter content (``trainer.merge.cached_merge``, as
the original evaluates merged models) and vLLM serves the merged model, while the transformers engine of the
base, built on first use, answers with the adapter off (:class:`MergedLoraEngine`; a second vLLM engine in the
same process fails on vLLM's CPU build). Greedy decoding. :func:`add_engine_arguments` is the one definition
of the model and engine flags of every command line that builds an engine.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from trainer.model_loading import check_no_remote_code, check_weight_files, model_folder
from trainer.model_registry import register_models
from trainer.presets import DEFAULT_PRESET, PRESETS, detect_model_type

ADAPTER_NAME = 'tars'
BACKENDS = ('auto', 'vllm', 'transformers')


@dataclass
class ModelSpec:
    base: str                     # base model (path or hub id)
    adapter: Optional[str] = None  # LoRA checkpoint directory, if any
    model_type: str = DEFAULT_PRESET  # ms-swift model type (trainer.presets)

    @property
    def name(self) -> str:
        """A readable, filesystem-safe name: the last two path parts of the adapter or the base."""
        parts = Path(self.adapter or self.base).parts[-2:]
        return '--'.join(p.replace('/', '-') for p in parts)


def resolve_model(model: str, base_model: Optional[str] = None, model_type: Optional[str] = None) -> ModelSpec:
    """A base model, a merged model, or a LoRA checkpoint (its base from ``--base_model``, the adapter's
    ``base_model_name_or_path`` or ms-swift's ``args.json``); a base that cannot be found is an error.
    ``model_type`` None: the checkpoint's own (``trainer.presets.detect_model_type`` on the model, then on
    its base), else the default preset."""
    path = Path(model)
    if not (path / 'adapter_config.json').exists():
        return ModelSpec(base=model, model_type=model_type or detect_model_type(model) or DEFAULT_PRESET)
    base = base_model
    if base is None:
        base = json.loads((path / 'adapter_config.json').read_text()).get('base_model_name_or_path')
    if (base is None or not _exists(base)) and (path / 'args.json').exists():
        base = json.loads((path / 'args.json').read_text()).get('model') or base
    if base is None or not _exists(base):
        raise FileNotFoundError(f'{model} is a LoRA checkpoint whose base model {base!r} cannot be found; '
                                'pass --base_model PATH_OR_HUB_ID')
    model_type = model_type or detect_model_type(model) or detect_model_type(base) or DEFAULT_PRESET
    return ModelSpec(base=base, adapter=str(path), model_type=model_type)


def _exists(name: str) -> bool:
    """A local path that exists, or something that looks like a hub id (org/name) when not offline."""
    if Path(name).exists():
        return True
    offline = os.environ.get('HF_HUB_OFFLINE') == '1'
    return not offline and name.count('/') == 1 and not name.startswith(('/', '.'))


def choose_backend(backend: str = 'auto', model_type: Optional[str] = None) -> str:
    """'auto': vLLM when a GPU and vLLM are present and vLLM serves the preset, else transformers."""
    if backend != 'auto':
        return backend
    import torch  # deferred: torch (~2 s) only for the GPU check; the flag parsers import this module

    if model_type in PRESETS and not PRESETS[model_type].vllm:
        return 'transformers'
    return 'vllm' if torch.cuda.is_available() and importlib.util.find_spec('vllm') else 'transformers'


def vllm_cpu_stack() -> bool:
    """Whether the installed vLLM is its CPU build (the ``TARS_STACK=vllm-cpu`` test stack): then
    ``trainer.vllm_cpu`` holds what the vLLM path does differently; on a GPU stack it is never imported."""
    try:
        importlib.metadata.distribution('vllm-cpu')
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def engine_dtype() -> Any:
    """The weights' dtype of every engine: bfloat16 on a GPU (the paper's setting), float32 on the CPU.

    A ``torch.dtype``, never its name: ms-swift's engines key their dtype tables by ``torch.dtype``
    (a string gave ``KeyError: 'bfloat16'`` in ``VllmEngine``)."""
    import torch  # deferred: the flag parsers import this module
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def vllm_engine_kwargs(spec: ModelSpec, max_model_len: int = 6400, gpu_memory_utilization: Optional[float] = None,
                       tensor_parallel_size: int = 1, max_lora_rank: int = 64) -> Dict:
    """``VllmEngine`` keyword arguments of an evaluated model: the original's evaluation settings (one audio per
    prompt: ms-swift #4210, #5784; a LoRA adapter applied per request). The GPU share defaults to the
    environment's ``VLLM_GPU_MEMORY_UTILIZATION`` (eval.sh, checked by its memory plan, docs/memory.md §4), else
    the original's 0.45; the modality limits are the preset's (image and video 0: vLLM skips the vision tower)."""
    if gpu_memory_utilization is None:
        gpu_memory_utilization = float(os.environ.get('VLLM_GPU_MEMORY_UTILIZATION') or 0.45)
    preset = PRESETS.get(spec.model_type or '')
    limits = json.loads(preset.vllm_limit_mm) if preset else {'audio': 1}
    return dict(model_type=spec.model_type, gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                limit_mm_per_prompt=limits, enable_lora=spec.adapter is not None,
                max_lora_rank=max_lora_rank)


def new_vllm_engine(model: str, batch_size: int, **kwargs: Any) -> Any:
    """ms-swift's ``VllmEngine`` for ``model`` (the one place that builds one): ``kwargs`` as ms-swift declares
    them, the dtype of ``engine_dtype``, and on vLLM's CPU build ``trainer.vllm_cpu.ENGINE_KWARGS``. The model
    folder must have passed ``check_no_remote_code`` (ms-swift hands vLLM ``trust_remote_code=True``)."""
    cpu_kwargs: Dict[str, Any] = {}
    if vllm_cpu_stack():
        from trainer import vllm_cpu  # before vLLM loads: it sets vLLM's CPU environment
        cpu_kwargs = vllm_cpu.ENGINE_KWARGS
    from swift.infer_engine import VllmEngine  # deferred: ms-swift and vLLM load in seconds, only here
    return VllmEngine(model, max_num_seqs=batch_size, torch_dtype=engine_dtype(), **kwargs, **cpu_kwargs)


def vllm_applies_lora(base: str) -> bool:
    """Whether vLLM can apply a LoRA adapter per request to the architecture of ``base`` (its config.json's
    ``architectures``, looked up in vLLM's model registry: the model class must support LoRA). True when vLLM
    does not know the architecture (vLLM then reports it itself)."""
    folder = model_folder(base)
    config = folder / 'config.json' if folder is not None else None
    if config is None or not config.is_file():
        return True
    architectures = json.loads(config.read_text()).get('architectures') or []
    from vllm import ModelRegistry  # deferred: vLLM loads in seconds, only on the vLLM path
    from vllm.model_executor.models.interfaces import supports_lora
    for arch in architectures:
        # vLLM 0.32 has no public per-architecture query; this is what LoRAModelRunnerMixin checks on the instance
        cls = ModelRegistry._try_load_model_cls(arch)
        if cls is not None:
            return bool(supports_lora(cls))
    return True


class MergedLoraEngine:
    """vLLM for a LoRA checkpoint of an architecture whose vLLM model cannot apply LoRA: ``merged`` (the vLLM
    engine of the adapter merged into the base) answers with the adapter on; an engine of the base, built by
    ``build_base`` on the first request with the adapter off (the text-only baseline), answers the others."""

    def __init__(self, merged: Any, merged_path: Path, build_base: Any) -> None:
        self.merged, self.merged_path, self._build_base, self._base = merged, merged_path, build_base, None

    def engine_for(self, use_adapter: bool) -> Any:
        """The engine of the merged model (``use_adapter``) or of the base."""
        if use_adapter:
            return self.merged
        if self._base is None:
            self._base = self._build_base()
        return self._base


def build_engine(spec: ModelSpec, backend: str = 'auto', batch_size: int = 16, trust_remote_code: bool = False) -> Any:
    """An ms-swift engine (``VllmEngine`` or ``TransformersEngine``, or a :class:`MergedLoraEngine`) for ``spec``.
    Refused before anything loads: a damaged (cut short) weight file of the base or adapter folder, and a folder
    that would run its own code unless ``trust_remote_code`` (``trainer.model_loading``)."""
    check_weight_files([spec.base, spec.adapter])
    check_no_remote_code([spec.base, spec.adapter], trust_remote_code)
    register_models()  # presets registered by the project (trainer.presets)
    backend = choose_backend(backend, spec.model_type)
    if backend == 'vllm' and spec.adapter and not vllm_applies_lora(spec.base):
        from trainer.merge import cached_merge
        merged = cached_merge(spec.base, spec.model_type, spec.adapter, trust_remote_code)
        print(f'vLLM cannot apply a LoRA adapter to {spec.model_type}: vLLM evaluates the merged model {merged}, '
              'the transformers engine the base with the adapter off', flush=True)
        merged_spec = ModelSpec(str(merged), None, spec.model_type)
        return MergedLoraEngine(new_vllm_engine(str(merged), batch_size, **vllm_engine_kwargs(merged_spec)), merged,
                                lambda: new_transformers_engine(ModelSpec(spec.base, None, spec.model_type),
                                                                batch_size))
    if backend == 'vllm':
        return new_vllm_engine(spec.base, batch_size, **vllm_engine_kwargs(spec))
    if backend != 'transformers':
        raise ValueError(f'backend must be auto, vllm or transformers, got {backend!r}')
    return new_transformers_engine(spec, batch_size)


def new_transformers_engine(spec: ModelSpec, batch_size: int) -> Any:
    """ms-swift's ``TransformersEngine`` for ``spec`` (checked before: ``build_engine``). The adapter is loaded
    into the model (a per-request adapter breaks batched generation in ms-swift 4.6's TransformersEngine: peft
    gets one adapter name for the whole batch); the text-only baseline switches it off around its generation."""
    from swift.infer_engine import TransformersEngine  # deferred: ms-swift (seconds), only here
    return TransformersEngine(spec.base, model_type=spec.model_type, max_batch_size=batch_size,
                              torch_dtype=engine_dtype(), adapters=[spec.adapter] if spec.adapter else None)


def generate(engine: Any, requests: List[Tuple[List[Dict], List[str]]], spec: ModelSpec, use_adapter: bool,
             max_new_tokens: int, *, temperature: float = 0.0, seed: Optional[int] = None) -> List[str]:
    """Completions for (messages, audios) requests, with or without the adapter: greedy by default,
    sampled at ``temperature`` (with ``seed``) otherwise."""
    from swift.infer_engine import AdapterRequest, InferRequest, RequestConfig  # deferred: ms-swift (seconds)
    infer_requests = [InferRequest(messages=m, audios=a) for m, a in requests]
    config = RequestConfig(max_tokens=max_new_tokens, temperature=temperature, seed=seed)
    adapter, context = None, nullcontext()
    if isinstance(engine, MergedLoraEngine):  # the adapter is in the merged model's weights
        engine, spec = engine.engine_for(use_adapter), ModelSpec(spec.base, None, spec.model_type)
    disable = getattr(getattr(engine, 'model', None), 'disable_adapter', None)  # a peft model in the engine
    if spec.adapter and disable is not None:
        if not use_adapter:
            context = disable()
    elif spec.adapter and use_adapter:  # vLLM: the adapter per request (LoRARequest)
        adapter = AdapterRequest(ADAPTER_NAME, spec.adapter)
    with context:
        responses = engine.infer(infer_requests, config, use_tqdm=False, adapter_request=adapter)
    return [r.choices[0].message.content or '' for r in responses]


def add_engine_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int = 1000,
                         batch_size: Optional[int] = 16, batch_size_help: str = 'sequences per engine batch',
                         model_type: Optional[str] = None, model_help: Optional[str] = None) -> None:
    """The model and engine flags of every command line that builds an engine (``resolve_model`` and
    ``build_engine`` take them): ``--model`` (required), ``--base_model``, ``--model_type`` (default
    ``model_type``; None: the checkpoint's own), ``--backend``, ``--max_new_tokens`` (default
    ``max_new_tokens``) and, unless ``batch_size`` is None, ``--batch_size``. ``parser`` may also be an
    argument group or a subcommand's parser."""
    parser.add_argument('--model', required=True,
                        help=model_help or 'base id/path, merged model, or LoRA checkpoint directory')
    parser.add_argument('--base_model', default=None, help="a LoRA checkpoint's base (default: from the checkpoint)")
    default = model_type or f"the checkpoint's own, else {DEFAULT_PRESET}"
    parser.add_argument('--model_type', default=model_type,
                        help=f'ms-swift model type (trainer.presets); default: {default}')
    parser.add_argument('--backend', default='auto', choices=BACKENDS,
                        help='auto: vllm when a GPU and vLLM are present and vLLM serves the preset, else transformers')
    parser.add_argument('--max_new_tokens', type=int, default=max_new_tokens)
    if batch_size is not None:
        parser.add_argument('--batch_size', type=int, default=batch_size, help=batch_size_help)
