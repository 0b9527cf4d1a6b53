"""The memory plan of a run, per GPU, before anything is downloaded (docs/memory.md).

Parameter counts come from the real checkpoints' configurations (``trainer/model_configs/*.json``, sources in
``trainer/model_configs/SOURCES.md``), built on PyTorch's ``meta`` device: no weights, no download, seconds.
Every other figure is a formula of those counts, the configuration's sizes and the launch settings, written out
in docs/memory.md and in the docstrings below. All figures are GiB (2**30 bytes) per GPU.

``python -m trainer.memory_plan --preset qwen2_5_omni --gpu A100-80`` prints the table; the launchers call
``python -m trainer.memory_plan preflight ...`` (docs/memory.md §4), which prints the table and exits 2 with a
one-line error naming the setting that cannot fit and a value that does.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

GIB = 2 ** 30
CONFIG_DIR = Path(__file__).resolve().parent / 'model_configs'

# Total memory of each card as the driver reports it (nvidia-smi memory.total, MiB), in GiB.
GPUS: Dict[str, float] = {'A100-40': 40960 / 1024, 'A100-80': 81920 / 1024, 'H100-80': 81559 / 1024,
                          'H200-141': 143771 / 1024}

# Per GPU, outside what PyTorch allocates: the CUDA context, NCCL buffers and allocator fragmentation.
CUDA_RESERVE_GIB = 1.5
# vLLM, outside weights and KV cache: CUDA graphs and non-torch memory (an estimate; docs/memory.md §2.5).
VLLM_FIXED_GIB = 1.0
# Tokens vLLM pushes through its profiling forward (its max_num_batched_tokens default); sets its activation peak.
VLLM_PROFILE_TOKENS = 8192
# Bytes per trainable parameter under mixed precision: bf16 weight 2 + bf16 gradient 2 + fp32 master 4 + Adam m, v 8.
TRAINABLE_BYTES = {'param': 2, 'grad': 2, 'optim': 12}
# Bytes per logit element kept at the loss: the bf16 logits, their fp32 copy for the log-softmax and its gradient.
LOGIT_BYTES = 2 + 4 + 4
EMBEDDER = 'Qwen/Qwen3-Embedding-0.6B'


@dataclass(frozen=True)
class ModelSpec:
    """How to read one real configuration: the class to build, where its parts and LLM layers live."""
    name: str                      # file stem under trainer/model_configs
    checkpoint: str                # hub id
    model_class: str               # transformers class built on the meta device
    sub_config: Optional[str]      # attribute of the file's config given to the class; None: the config itself
    text_config: Tuple[str, ...]   # attribute path from the file's config to the LLM's config
    layers: str                    # module path of the LLM's decoder layers (LoRA 'all-linear' targets)
    parts: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()   # part -> module-name prefixes; the rest is 'llm'
    audio_tokens_per_second: float = 0.0                  # LLM tokens per second of audio
    speech_only_parts: Tuple[str, ...] = ()               # built only with audio output (ENABLE_AUDIO_OUTPUT)


MODEL_SPECS: Dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec('qwen2_5_omni', 'Qwen/Qwen2.5-Omni-7B', 'Qwen2_5OmniForConditionalGeneration', None,
              ('thinker_config', 'text_config'), 'thinker.model.layers',
              (('audio', ('thinker.audio_tower',)), ('vision', ('thinker.visual',)), ('talker', ('talker',)),
               ('token2wav', ('token2wav',))), audio_tokens_per_second=25.0,
              speech_only_parts=('talker', 'token2wav')),
    ModelSpec('qwen2_audio', 'Qwen/Qwen2-Audio-7B-Instruct', 'Qwen2AudioForConditionalGeneration', None,
              ('text_config',), 'model.language_model.layers',
              (('audio', ('model.audio_tower', 'model.multi_modal_projector')),), audio_tokens_per_second=25.0),
    ModelSpec('phi4_multimodal', 'microsoft/Phi-4-multimodal-instruct', 'Phi4MultimodalForCausalLM', None, (),
              'model.layers', (('audio', ('model.embed_tokens_extend.audio_embed',)),
                               ('vision', ('model.embed_tokens_extend.image_embed',))),
              audio_tokens_per_second=12.5),
    ModelSpec('qwen3_embedding', EMBEDDER, 'Qwen3Model', None, (), 'layers'),
    ModelSpec('qwen3_omni_moe', 'Qwen/Qwen3-Omni-30B-A3B-Instruct', 'Qwen3OmniMoeThinkerForConditionalGeneration',
              'thinker_config', ('thinker_config', 'text_config'), 'model.layers',
              (('audio', ('audio_tower',)), ('vision', ('visual',))), audio_tokens_per_second=12.5),
)}


@dataclass(frozen=True)
class LLMShape:
    """The LLM sizes the activation and KV-cache formulas need (docs/memory.md §2)."""
    hidden: int
    intermediate: int     # the MLP width a token passes through (an MoE: experts per token x expert width)
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int = 0    # max_position_embeddings: vLLM refuses a longer max_model_len


@dataclass(frozen=True)
class LoRAShape:
    """The adapted Linears of one decoder layer: how many, the sum of their in_features, and the rank."""
    modules: int
    inputs: int
    rank: int = 8


@dataclass(frozen=True)
class ModelCount:
    """Parameters per part (counted on the meta device), the LLM's shape and its LoRA parameters at rank 1."""
    spec: ModelSpec
    parts: Dict[str, int]
    shape: LLMShape
    lora_per_rank: int     # sum over the decoder layers' Linear modules of (in + out)
    layer_linears: Tuple[int, int] = (0, 0)   # one decoder layer's Linear modules: (count, sum of in_features)

    def lora(self, rank: int) -> LoRAShape:
        """The LoRA shape of one decoder layer at ``rank``."""
        return LoRAShape(self.layer_linears[0], self.layer_linears[1], rank)

    def loaded(self, audio_output: bool, vision: bool = True) -> Dict[str, int]:
        """The parts a loader builds: talker/token2wav only with audio output, vision when asked."""
        return {k: v for k, v in self.parts.items()
                if (audio_output or k not in self.spec.speech_only_parts) and (vision or k != 'vision')}


def read_config(name_or_path: str) -> Dict[str, Any]:
    """The configuration dict of a preset file stem (``trainer/model_configs/<name>.json``) or a config.json path;
    a one-line ValueError naming the file when it is missing or not JSON."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f'{name_or_path}.json'
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f'{path}: cannot read the model configuration ({err.strerror})') from None
    except ValueError as err:
        raise ValueError(f'{path}: not a JSON model configuration ({err})') from None


def _config_object(config: Dict[str, Any]) -> Any:
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging
    values = {k: v for k, v in config.items() if k not in ('model_type', 'architectures')}
    # transformers checks every special-token id of an omni configuration against each sub-model's vocabulary
    # and warns for the ids of the other sub-models (e.g. the text ids against the talker's 8448 codes): noise
    # in a launcher's preflight, and no parameter depends on it.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoConfig.for_model(config['model_type'], **values)
    finally:
        hf_logging.set_verbosity(verbosity)


def _attr_path(obj: Any, path: Sequence[str]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def llm_shape(text_config: Any) -> LLMShape:
    """The LLM sizes of a transformers text config (MoE: the active MLP width, experts per token x expert size)."""
    hidden, heads = text_config.hidden_size, text_config.num_attention_heads
    experts = getattr(text_config, 'num_experts_per_tok', None)
    intermediate = (experts * text_config.moe_intermediate_size if experts and getattr(text_config, 'num_experts', 0)
                    else text_config.intermediate_size)
    return LLMShape(hidden=hidden, intermediate=intermediate, layers=text_config.num_hidden_layers, heads=heads,
                    kv_heads=getattr(text_config, 'num_key_value_heads', None) or heads,
                    head_dim=getattr(text_config, 'head_dim', None) or hidden // heads, vocab=text_config.vocab_size,
                    max_positions=getattr(text_config, 'max_position_embeddings', 0) or 0)


def build_meta(spec: ModelSpec, config: Optional[Dict[str, Any]] = None) -> Tuple[Any, Any]:
    """(model, its root config): ``spec``'s class built from ``config`` (default: its file) on the meta device."""
    import torch
    import transformers
    root = _config_object(config if config is not None else read_config(spec.name))
    model_config = getattr(root, spec.sub_config) if spec.sub_config else root
    with torch.device('meta'):
        return getattr(transformers, spec.model_class)(model_config), root


def count_model(spec: ModelSpec, config: Optional[Dict[str, Any]] = None) -> ModelCount:
    """Build ``spec``'s class from ``config`` (default: its file in trainer/model_configs) on the meta device and
    count parameters per part (tied weights once), and the LoRA parameters per unit of rank."""
    import torch
    model, root = build_meta(spec, config)
    parts: Dict[str, int] = {'llm': 0}
    for name, param in model.named_parameters():   # named_parameters yields a tied weight once
        part = next((p for p, prefixes in spec.parts for pre in prefixes
                     if name == pre or name.startswith(pre + '.')), 'llm')
        parts[part] = parts.get(part, 0) + param.numel()
    layers = model.get_submodule(spec.layers)
    lora = sum(m.in_features + m.out_features for m in layers.modules() if isinstance(m, torch.nn.Linear))
    first = [m for m in layers[0].modules() if isinstance(m, torch.nn.Linear)]
    text = _attr_path(root, spec.text_config) if spec.text_config else root
    return ModelCount(spec, parts, llm_shape(text), lora, (len(first), sum(m.in_features for m in first)))


@functools.lru_cache(maxsize=None)
def preset_count(name: str) -> ModelCount:
    """``count_model`` of a real configuration, once per process (a 10 B model builds in a few seconds)."""
    if name not in MODEL_SPECS:
        raise ValueError(f'no real configuration for {name!r}; known: {sorted(MODEL_SPECS)}')
    return count_model(MODEL_SPECS[name])


# ---------------------------------------------------------------------------------------------------- formulas

def layer_activation_elements(s: LLMShape, lora: 'LoRAShape', dropout: bool = True) -> Tuple[int, int]:
    """(elements, mask elements) one decoder layer keeps for backward per token, LoRA on every Linear of the
    layer, flash/SDPA attention (no [heads, T, T] matrix); docs/memory.md §2.3, counted against autograd's saved
    tensors in scripts/memory_check.py:

    - the two RMSNorms keep their inputs (2 h);
    - attention keeps q and its output (2 q, q = heads x head_dim), k and v (2 kv, kv = kv_heads x head_dim);
    - the SwiGLU MLP keeps gate, up and silu(gate) (3 I);
    - every adapter keeps its rank-r intermediate (n_adapters x r);
    - the adapters' inputs: without dropout the normed attention and MLP inputs and the down projection's input
      (2 h + I, shared by the adapters that read them); with dropout each adapter keeps its own dropped input
      and its dropout mask (sum of the adapted Linears' in_features, each).
    The mask is 1 byte per element on a GPU (bool), a float on the CPU (scripts/memory_check.py)."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    base = 2 * s.hidden + 2 * q + 2 * kv + 3 * s.intermediate + lora.modules * lora.rank
    if dropout:
        return base + lora.inputs, lora.inputs
    return base + 2 * s.hidden + s.intermediate, 0


def activation_bytes(s: LLMShape, lora: 'LoRAShape', tokens: int, dtype_bytes: int, checkpointing: bool,
                     dropout: bool = True, mask_bytes: int = 1) -> int:
    """Activation bytes of a training forward over ``tokens`` tokens (micro-batch x sequence length).

    Without checkpointing: layers x tokens x (elements x dtype + mask elements x mask bytes).
    With checkpointing: each layer keeps only its input (layers x tokens x h x dtype) and the backward recomputes
    one layer at a time (+ one layer's full activations)."""
    elements, masks = layer_activation_elements(s, lora, dropout)
    per_layer = tokens * (elements * dtype_bytes + masks * mask_bytes)
    if checkpointing:
        return s.layers * tokens * s.hidden * dtype_bytes + per_layer
    return s.layers * per_layer


def kv_bytes_per_token(s: LLMShape, dtype_bytes: int = 2, tensor_parallel: int = 1) -> int:
    """KV-cache bytes per token on one GPU: keys and values of every layer, 2 x layers x kv_heads x head_dim x
    dtype, divided by the tensor-parallel size when it divides the kv heads (vLLM shards them; else replicates)."""
    split = tensor_parallel if s.kv_heads % tensor_parallel == 0 else 1
    return 2 * s.layers * s.kv_heads * s.head_dim * dtype_bytes // split


def vllm_weight_params(count: 'ModelCount', vision: bool, tensor_parallel: int = 1) -> float:
    """Parameters one GPU of a vLLM engine holds: the LLM divided by the tensor-parallel size (vLLM shards its
    Linears and vocabulary), the encoders whole (counted unsharded: the plan's upper bound)."""
    loaded = count.loaded(False, vision=vision)
    return loaded.get('llm', 0) / tensor_parallel + sum(v for k, v in loaded.items() if k != 'llm')


# ---------------------------------------------------------------------------------------------------- the plan

@dataclass
class Settings:
    """Launch settings the plan depends on (the defaults are the paper's GRPO run on 8 GPUs, docs/original.md)."""
    preset: str = 'qwen2_5_omni'
    kind: str = 'grpo'                       # grpo | dpo | sft | eval
    gpus: int = 8                            # world size
    batch_per_gpu: int = 2                   # micro-batch (completions per GPU and forward)
    grad_accum: int = 4                      # world batch / (GPUs x batch per GPU)
    max_completion_length: int = 512
    max_length: int = 8704                   # the truncation cap (prompt + completion)
    max_audio_seconds: float = 60.0          # 0: no limit, the sequence is max_length
    prompt_text_tokens: int = 512            # system prompt + question text, without the audio
    deepspeed: str = 'zero2'                 # none | zero0..zero3 (offload variants read as their stage)
    gradient_checkpointing: bool = True      # ms-swift's default
    use_vllm: bool = True
    vllm_memory_fraction: float = 0.15
    vllm_max_model_len: int = 8704
    vllm_max_num_seqs: Optional[int] = None  # None: ms-swift's default, batch per GPU x accumulation steps
    vllm_vision: bool = True                 # False when --vllm_limit_mm_per_prompt sets image and video to 0
    vllm_tensor_parallel: int = 1            # --vllm_tensor_parallel_size: ranks that share one colocated engine
    sleep_level: int = 0
    embedder: Optional[str] = EMBEDDER       # the behaviour reward's embedder, loaded on every rank (fp32)
    representation: bool = True              # the representation reward's pooled hidden states
    audio_output: bool = False               # ENABLE_AUDIO_OUTPUT: build the talker (Qwen2.5-Omni)
    lora_rank: int = 8
    lora_dropout: bool = True
    dtype_bytes: int = 2                     # bf16
    fraction_setting: str = '--vllm_gpu_memory_utilization'   # how messages name the vLLM fraction

    def fraction_text(self, value: float) -> str:
        """The fraction setting as a user writes it: ``--flag 0.3`` or ``NAME=0.3``."""
        name = self.fraction_setting
        return f'{name} {value:g}' if name.startswith('--') else f'{name}={value:g}'

    def sequence_length(self, spec: ModelSpec) -> int:
        """Planned tokens per sequence: prompt text + the longest accepted clip's audio tokens + completion,
        capped at max_length (max_length itself when clips are not limited or the model has no audio)."""
        if not self.max_audio_seconds or not spec.audio_tokens_per_second:
            return self.max_length
        audio = math.ceil(self.max_audio_seconds * spec.audio_tokens_per_second)
        return min(self.max_length, self.prompt_text_tokens + audio + self.max_completion_length)

    @property
    def zero_stage(self) -> int:
        return 0 if self.deepspeed in ('none', '') else int(self.deepspeed[4])


@dataclass
class Plan:
    """GiB per GPU of each component, and the checks (docs/memory.md §3)."""
    settings: Settings
    gpu_gib: float
    rows: List[Tuple[str, float, str]] = field(default_factory=list)   # (component, GiB, what it holds)
    train_peak_gib: float = 0.0
    rollout_peak_gib: float = 0.0
    vllm_budget_gib: float = 0.0
    vllm_need_gib: float = 0.0       # weights + activations + fixed + KV of one max_model_len sequence
    vllm_kv_gib: float = 0.0         # KV cache left in the budget
    vllm_sequences: float = 0.0      # max_model_len sequences that KV cache holds
    vllm_wanted_sequences: int = 0
    vllm_too_long: bool = False      # vllm_max_model_len beyond the model's max_position_embeddings
    notes: List[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return max(self.train_peak_gib, self.rollout_peak_gib)

    @property
    def headroom_gib(self) -> float:
        return self.gpu_gib - self.peak_gib

    @property
    def vllm_fits(self) -> bool:
        return not self.vllm_need_gib or (self.vllm_budget_gib >= self.vllm_need_gib and not self.vllm_too_long)

    @property
    def fits(self) -> bool:
        return self.headroom_gib >= 0 and self.vllm_fits


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def make_plan(settings: Settings, gpu_gib: float, count: Optional[ModelCount] = None,
              embedder: Optional[ModelCount] = None) -> Plan:
    """The plan of ``settings`` on a GPU of ``gpu_gib``; ``count`` defaults to the preset's real configuration
    (``count``/``embedder`` let the tests plan the tiny twins)."""
    st = settings
    count = count or preset_count(st.preset)
    spec, shape = count.spec, count.shape
    plan = Plan(st, gpu_gib)
    world, stage, db = max(1, st.gpus), st.zero_stage, st.dtype_bytes
    seq = st.sequence_length(spec)
    loaded = count.loaded(st.audio_output)
    names = '+'.join(k for k in ('llm', 'audio', 'vision', 'talker', 'token2wav') if k in loaded)
    n_loaded = sum(loaded.values())
    weights = _gib(n_loaded * db) / (world if stage == 3 else 1)
    plan.rows.append(('training weights', weights, f'{names}, {n_loaded / 1e9:.2f} B x {db} B'
                      + (f' / {world} (ZeRO-3)' if stage == 3 else '')))
    if st.kind == 'eval':
        plan.rows = []
    else:
        lora = count.lora_per_rank * st.lora_rank
        parts = {'param': TRAINABLE_BYTES['param'] / (world if stage >= 3 else 1),
                 'grad': TRAINABLE_BYTES['grad'] / (world if stage >= 2 else 1),
                 'optim': TRAINABLE_BYTES['optim'] / (world if stage >= 1 else 1)}
        plan.rows.append(('LoRA params + grads + Adam', _gib(lora * sum(parts.values())),
                          f'{lora / 1e6:.1f} M x (2 + 2 + 12 B), ZeRO-{stage} partitioned'))
        rows_per_forward = st.batch_per_gpu * (2 if st.kind == 'dpo' else 1)   # DPO: chosen and rejected
        tokens = rows_per_forward * seq
        act = activation_bytes(shape, count.lora(st.lora_rank), tokens, db, st.gradient_checkpointing,
                               st.lora_dropout)
        plan.rows.append(('activations', _gib(act), f'{rows_per_forward} x {seq} tokens, checkpointing '
                          + ('on' if st.gradient_checkpointing else 'off')))
        # GRPO keeps logits of the completion window only (left padding); DPO/SFT of the whole sequence
        logit_rows = st.batch_per_gpu * st.max_completion_length if st.kind == 'grpo' else tokens
        plan.rows.append(('logits at the loss', _gib(logit_rows * shape.vocab * LOGIT_BYTES),
                          f'{logit_rows} x {shape.vocab} x {LOGIT_BYTES} B'))
        if st.kind == 'grpo' and not st.use_vllm:   # rollouts by transformers' generate: its KV cache
            kv_gen = st.batch_per_gpu * seq * kv_bytes_per_token(shape, db)
            plan.rows.append(('rollout KV cache (transformers)', _gib(kv_gen),
                              f'{st.batch_per_gpu} x {seq} tokens x {kv_bytes_per_token(shape, db) // 1024} KiB'))
        if st.kind == 'grpo' and st.embedder:
            emb = embedder or (preset_count('qwen3_embedding') if st.embedder == EMBEDDER else None)
            n_emb = sum(emb.parts.values()) if emb else 0
            plan.rows.append(('behaviour embedder', _gib(n_emb * 4), f'{st.embedder}, {n_emb / 1e6:.0f} M x 4 B (fp32)'
                              if emb else f'{st.embedder}: size not planned'))
        if st.kind == 'grpo' and st.representation:
            rollouts = st.batch_per_gpu * st.grad_accum
            pooled = rollouts * (shape.layers + 1) * shape.hidden * 4
            plan.rows.append(('pooled hidden states', _gib(pooled),
                              f'{rollouts} rollouts x {shape.layers + 1} x {shape.hidden} x 4 B'))
    plan.rows.append(('CUDA context, NCCL, fragmentation', CUDA_RESERVE_GIB, 'fixed estimate'))
    base = sum(r[1] for r in plan.rows)
    if st.kind in ('grpo', 'eval') and st.use_vllm:
        tp = st.vllm_tensor_parallel
        v_weights = _gib(vllm_weight_params(count, st.vllm_vision, tp) * db)
        kv_token = kv_bytes_per_token(shape, db, tp)
        # ms-swift's default: one engine generates every sequence of its tensor-parallel group's ranks at once
        num_seqs = st.vllm_max_num_seqs or (st.batch_per_gpu * st.grad_accum * tp)
        v_act = _gib(VLLM_PROFILE_TOKENS * (3 * shape.intermediate + 6 * shape.hidden) * db
                     + num_seqs * shape.vocab * 4)
        plan.vllm_budget_gib = st.vllm_memory_fraction * gpu_gib
        plan.vllm_need_gib = v_weights + v_act + VLLM_FIXED_GIB + _gib(st.vllm_max_model_len * kv_token)
        plan.vllm_kv_gib = plan.vllm_budget_gib - v_weights - v_act - VLLM_FIXED_GIB
        plan.vllm_sequences = max(0.0, plan.vllm_kv_gib * GIB / (seq * kv_token))
        plan.vllm_wanted_sequences = num_seqs
        plan.vllm_too_long = bool(shape.max_positions) and st.vllm_max_model_len > shape.max_positions
        vision = ('no vision tower' if 'vision' not in count.parts
                  else 'vision skipped' if not st.vllm_vision else 'with vision')
        plan.rows.append(('vLLM (fraction x GPU)', plan.vllm_budget_gib,
                          f'{st.vllm_memory_fraction:g} x {gpu_gib:.1f}: weights {v_weights:.1f} ({vision}'
                          + (f', tensor parallel {tp}' if tp > 1 else '') + ') + '
                          f'activations {v_act:.1f} + fixed {VLLM_FIXED_GIB:.1f} + KV {max(plan.vllm_kv_gib, 0):.1f}'
                          f' = {plan.vllm_sequences:.1f} x {seq} tokens ({kv_token // 1024} KiB/token)'))
        if st.sleep_level == 0 or st.kind == 'eval':
            plan.train_peak_gib = base + plan.vllm_budget_gib
        else:   # vLLM sleeps during training (level 1: weights to CPU, KV dropped; level 2: both dropped)
            act_rows = {'activations', 'logits at the loss'}
            plan.train_peak_gib = base
            plan.rollout_peak_gib = base - sum(r[1] for r in plan.rows if r[0] in act_rows) + plan.vllm_budget_gib
            plan.notes.append(f'sleep_level {st.sleep_level}: vLLM releases its memory while training')
        if plan.vllm_sequences < num_seqs and plan.vllm_fits:
            plan.notes.append(f'vLLM KV cache holds {plan.vllm_sequences:.1f} of the {num_seqs} sequences of '
                              f'{seq} tokens a rank generates at once (slower rollouts, not a failure)')
    else:
        plan.train_peak_gib = base
    return plan


def format_plan(plan: Plan, title: str = '') -> str:
    """The plan as a table (component, GiB per GPU, what it holds), then total, headroom and notes."""
    st = plan.settings
    seq = st.sequence_length(MODEL_SPECS[st.preset]) if st.preset in MODEL_SPECS else st.max_length
    what = (f'vLLM engine, {plan.vllm_wanted_sequences} sequences of {seq} tokens' if st.kind == 'eval' else
            f'batch {st.batch_per_gpu}/GPU, DeepSpeed {st.deepspeed}, sequence {seq} tokens')
    lines = [title or f'memory plan: {st.preset} {st.kind}, {st.gpus} GPU(s) of {plan.gpu_gib:.1f} GiB, {what}']
    width = max(len(r[0]) for r in plan.rows)
    lines.append(f'  {"component":<{width}}  GiB/GPU  what')
    for name, gib, what in plan.rows:
        lines.append(f'  {name:<{width}}  {gib:7.2f}  {what}')
    lines.append(f'  {"peak":<{width}}  {plan.peak_gib:7.2f}  of {plan.gpu_gib:.1f} GiB')
    pct = 100 * plan.headroom_gib / plan.gpu_gib
    lines.append(f'  {"headroom":<{width}}  {plan.headroom_gib:7.2f}  {pct:.0f} %')
    if plan.vllm_need_gib:
        lines.append(f'  vLLM needs {plan.vllm_need_gib:.1f} GiB to start (one {st.vllm_max_model_len}-token '
                     f'sequence); its fraction gives {plan.vllm_budget_gib:.1f}')
    lines += [f'  note: {n}' for n in plan.notes]
    return '\n'.join(lines)


def min_vllm_fraction(plan: Plan) -> float:
    """The smallest fraction (2 decimals, rounded up) that holds vLLM's weights, activations, fixed memory and the
    KV cache of every sequence a rank generates at once."""
    st = plan.settings
    spec = MODEL_SPECS.get(st.preset)
    seq = st.sequence_length(spec) if spec else st.max_length
    shape = preset_count(st.preset).shape if spec else None
    kv_all = (plan.vllm_wanted_sequences * seq * kv_bytes_per_token(shape, st.dtype_bytes, st.vllm_tensor_parallel)
              if shape else 0)
    need = max(plan.vllm_need_gib, plan.vllm_budget_gib - plan.vllm_kv_gib + _gib(kv_all))
    return math.ceil(100 * need / plan.gpu_gib) / 100


def remedies(settings: Settings, gpu_gib: float) -> List[Tuple[str, Plan]]:
    """Single changes that make a plan fit, in the order a user would try them (the first is the error's
    suggestion): the vLLM fraction, the micro-batch, gradient checkpointing, ZeRO-3, vLLM sleep."""
    out: List[Tuple[str, Plan]] = []
    base = make_plan(settings, gpu_gib)
    tries: List[Tuple[str, Settings]] = []
    prefix = ''
    if settings.use_vllm and settings.kind in ('grpo', 'eval'):
        frac = min_vllm_fraction(base)
        if frac != settings.vllm_memory_fraction:
            tries.append((settings.fraction_text(frac),
                          dataclasses.replace(settings, vllm_memory_fraction=frac)))
        if frac > settings.vllm_memory_fraction:   # vLLM needs more: every other change comes on top of it
            prefix = f'{settings.fraction_text(frac)} with '
            settings = dataclasses.replace(settings, vllm_memory_fraction=frac)
    if settings.kind != 'eval':
        if settings.batch_per_gpu > 1:
            tries.append(('BATCH_SIZE_PER_GPU=1', dataclasses.replace(
                settings, batch_per_gpu=1, grad_accum=settings.grad_accum * settings.batch_per_gpu)))
        if not settings.gradient_checkpointing:
            tries.append(('--gradient_checkpointing true',
                          dataclasses.replace(settings, gradient_checkpointing=True)))
        if settings.zero_stage < 3:
            tries.append(('DEEPSPEED=zero3', dataclasses.replace(settings, deepspeed='zero3')))
        if settings.use_vllm and settings.sleep_level == 0 and settings.kind == 'grpo':
            tries.append(('--sleep_level 1', dataclasses.replace(settings, sleep_level=1)))
    tries = tries[:1] + [(prefix + label, changed) for label, changed in tries[1:]] if prefix else tries
    for label, changed in tries:
        plan = make_plan(changed, gpu_gib)
        if plan.fits:
            out.append((label, plan))
    return out


def failure(settings: Settings, plan: Plan) -> Optional[str]:
    """The one-line error of a plan that does not fit (None when it fits): the setting, the figures, a value
    that fits."""
    if plan.fits:
        return None
    fixes = remedies(settings, plan.gpu_gib)
    fix = (f'{fixes[0][0]} fits (peak {fixes[0][1].peak_gib:.1f} GiB)' if fixes
           else f'no single change fits; a GPU of {math.ceil(plan.peak_gib / 0.9)} GiB does')
    if plan.vllm_too_long:
        limit = preset_count(settings.preset).shape.max_positions if settings.preset in MODEL_SPECS else 0
        return (f'--vllm_max_model_len {settings.vllm_max_model_len} cannot fit: the model takes at most {limit} '
                f'positions (max_position_embeddings); --vllm_max_model_len {limit} --max_length {limit} fits')
    if not plan.vllm_fits:
        return (f'{settings.fraction_text(settings.vllm_memory_fraction)} cannot fit: vLLM needs '
                f'{plan.vllm_need_gib:.1f} GiB of the {plan.gpu_gib:.1f} GiB GPU for its weights, activations and '
                f'one {settings.vllm_max_model_len}-token sequence but gets {plan.vllm_budget_gib:.1f}; {fix}')
    return (f'the run needs {plan.peak_gib:.1f} GiB per GPU on a {plan.gpu_gib:.1f} GiB GPU '
            f'(BATCH_SIZE_PER_GPU={settings.batch_per_gpu}, DEEPSPEED={settings.deepspeed}, '
            f'gradient checkpointing {"on" if settings.gradient_checkpointing else "off"}); {fix}')


def download_sources(settings: Settings, use_hf: str) -> str:
    """Where a run's downloads come from: ms-swift fetches every model (the policy, the embedder, the xFinder
    judge) from ModelScope unless USE_HF=1, then from the Hugging Face Hub; the datasets load from the Hub."""
    hub = 'Hugging Face Hub (USE_HF=1)' if use_hf.lower() in ('1', 'true') else 'ModelScope (USE_HF=1 for Hugging Face)'
    models = [MODEL_SPECS[settings.preset].checkpoint if settings.preset in MODEL_SPECS else settings.preset]
    if settings.kind == 'grpo' and settings.embedder and '/' in settings.embedder:
        models.append(settings.embedder)
    return f'  downloads: models ({", ".join(models)}; the xFinder judge when used) from {hub}; datasets from the ' \
           'Hugging Face Hub'


def gpu_size(value: str) -> float:
    """GiB of a card name (A100-40, A100-80, H100-80, H200-141) or a number of GB (read as GiB)."""
    if value in GPUS:
        return GPUS[value]
    try:
        size = float(value)
    except ValueError:
        raise ValueError(f'GPU_MEMORY_GB (--gpu) must be one of {", ".join(GPUS)} or a size in GB, '
                         f'got {value!r}') from None
    if not 0 < size < 10000:
        raise ValueError(f'GPU_MEMORY_GB (--gpu) must be a positive number of GB, got {value!r}')
    return size


# ---------------------------------------------------------------------------------------------------- commands

def _bool(value: str) -> bool:
    if value.lower() in ('1', 'true', 'yes'):
        return True
    if value.lower() in ('0', 'false', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')


def _mm_limit_has_vision(value: str) -> bool:
    """Whether a ``--vllm_limit_mm_per_prompt`` JSON leaves vLLM's vision tower in (image or video not 0)."""
    try:
        limits = json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--vllm_limit_mm_per_prompt must be JSON, got {value!r}') from None
    return not (limits.get('image', 1) == 0 and limits.get('video', 1) == 0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m trainer.memory_plan', description=__doc__.split('\n\n')[0],
                                allow_abbrev=False)
    p.add_argument('--launcher', default='memory plan', help='the name its one-line error starts with')
    p.add_argument('--use_hf', default='', help='the USE_HF setting (where the models come from)')
    p.add_argument('--preset', default='qwen2_5_omni', choices=sorted(MODEL_SPECS))
    p.add_argument('--kind', default='grpo', choices=['grpo', 'dpo', 'sft', 'eval'])
    p.add_argument('--gpu', default='A100-80', help=f'{", ".join(GPUS)} or a size in GB')
    p.add_argument('--gpus', type=int, default=8, help='GPUs in all (world size)')
    p.add_argument('--batch_per_gpu', type=int, default=2)
    p.add_argument('--world_batch', type=int, default=64)
    p.add_argument('--deepspeed', default=None, help="none | zero2 | zero3; default: the preset's (trainer.presets)")
    p.add_argument('--audio_output', type=_bool, default=False)
    p.add_argument('--reward_funcs', nargs='+', default=None,
                   help='reward names (default: all four TARS rewards); the behaviour reward loads the embedder, '
                        'the representation reward pools hidden states')
    p.add_argument('--embedder', default=EMBEDDER, help='the behaviour reward\'s embedder')
    p.add_argument('--max_audio_seconds', type=float, default=60.0)
    p.add_argument('--prompt_text_tokens', type=int, default=512)
    p.add_argument('--json', action='store_true', help='print the plan as JSON')
    # ms-swift flags as the launchers pass them (the last one wins, as in ms-swift)
    p.add_argument('--max_completion_length', type=int, default=512)
    p.add_argument('--max_length', type=int, default=None, help="default: the preset's")
    p.add_argument('--gradient_checkpointing', type=_bool, default=True)
    p.add_argument('--use_vllm', type=_bool, default=None)
    p.add_argument('--vllm_gpu_memory_utilization', type=float, default=None)
    p.add_argument('--vllm_max_model_len', type=int, default=None, help="default: the preset's max length")
    p.add_argument('--vllm_max_num_seqs', type=int, default=None)
    p.add_argument('--vllm_tensor_parallel_size', type=int, default=None,
                   help="ranks sharing one colocated vLLM engine; default the preset's (trainer.presets)")
    p.add_argument('--vllm_limit_mm_per_prompt', type=_mm_limit_has_vision, default=None, dest='vllm_vision',
                   help="JSON; default the preset's (trainer.presets vllm_limit_mm)")
    p.add_argument('--fraction_name', default='--vllm_gpu_memory_utilization',
                   help='how the error names the vLLM fraction setting (eval.sh: VLLM_GPU_MEMORY_UTILIZATION)')
    p.add_argument('--sleep_level', type=int, default=0)
    p.add_argument('--lora_rank', type=int, default=8)
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings of parsed arguments; the preset row's vLLM settings where the flags leave them out."""
    from trainer.presets import get_preset
    preset = get_preset(args.preset) if args.preset in _preset_names() else None
    use_vllm = args.use_vllm if args.use_vllm is not None else bool(preset and preset.vllm)
    fraction = args.vllm_gpu_memory_utilization
    if fraction is None:
        fraction = preset.vllm_memory_fraction if preset else 0.15
    max_length = args.max_length or (preset.max_length if preset else 8704)
    vision = args.vllm_vision
    if vision is None:
        vision = _mm_limit_has_vision(preset.vllm_limit_mm) if preset else True
    if args.gpus < 1 or args.batch_per_gpu < 1 or args.world_batch % (args.gpus * args.batch_per_gpu):
        raise ValueError(f'world batch {args.world_batch} must be a multiple of GPUs x batch per GPU = '
                         f'{args.gpus * args.batch_per_gpu}')
    # the preset's tensor-parallel size is the colocated training engines'; the evaluation engine runs on one GPU
    tensor_parallel = args.vllm_tensor_parallel_size or (preset.vllm_tensor_parallel
                                                         if preset and args.kind == 'grpo' else 1)
    if use_vllm and (tensor_parallel < 1 or args.gpus % tensor_parallel):
        raise ValueError(f'--vllm_tensor_parallel_size {tensor_parallel} must divide the {args.gpus} GPUs '
                         '(ms-swift groups the ranks into colocated vLLM engines of that size)')
    return Settings(
        preset=args.preset, kind=args.kind, gpus=args.gpus, batch_per_gpu=args.batch_per_gpu,
        grad_accum=args.world_batch // (args.gpus * args.batch_per_gpu),
        max_completion_length=args.max_completion_length, max_length=max_length,
        max_audio_seconds=args.max_audio_seconds, prompt_text_tokens=args.prompt_text_tokens,
        deepspeed=args.deepspeed or (preset.deepspeed if preset else 'zero2'),
        gradient_checkpointing=args.gradient_checkpointing, use_vllm=use_vllm,
        vllm_memory_fraction=fraction, vllm_max_model_len=args.vllm_max_model_len or max_length,
        vllm_max_num_seqs=args.vllm_max_num_seqs, vllm_vision=vision, vllm_tensor_parallel=tensor_parallel,
        sleep_level=args.sleep_level,
        embedder=args.embedder if _has_reward(args.reward_funcs, 'tars_behaviour') else None,
        representation=_has_reward(args.reward_funcs, 'tars_representation'),
        audio_output=args.audio_output, lora_rank=args.lora_rank, fraction_setting=args.fraction_name)


# the original's reward names (trainer.rewards aliases) that load the same machinery
_REWARD_ALIASES = {'hsorm.hidden_state_sim': 'tars_representation', 'reward_align_audio_to_text': 'tars_behaviour'}


def _has_reward(names: Optional[List[str]], reward: str) -> bool:
    return names is None or any(_REWARD_ALIASES.get(n, n) == reward for n in names)


def _preset_names() -> List[str]:
    from trainer.presets import PRESETS
    return list(PRESETS)


def plan_dict(plan: Plan) -> Dict[str, Any]:
    """The plan as JSON-ready data (the GPU smoke test stores it beside its measurements)."""
    return {'settings': dataclasses.asdict(plan.settings), 'gpu_gib': round(plan.gpu_gib, 2),
            'components_gib': {name: round(gib, 3) for name, gib, _ in plan.rows},
            'peak_gib': round(plan.peak_gib, 3), 'headroom_gib': round(plan.headroom_gib, 3),
            'vllm_need_gib': round(plan.vllm_need_gib, 3), 'vllm_budget_gib': round(plan.vllm_budget_gib, 3),
            'fits': plan.fits}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m trainer.memory_plan [preflight] --preset P --gpu G [flags]``: print the plan; ``preflight``
    (the launchers) also exits 2 with the one-line error when it does not fit. Unknown flags are ignored (the
    launchers pass every ms-swift flag; the plan reads the ones it knows)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preflight = bool(argv) and argv[0] == 'preflight'
    if preflight:
        argv = argv[1:]
    args, _ = parser().parse_known_args(argv)
    me = args.launcher
    try:
        settings = settings_from_args(args)
        plan = make_plan(settings, gpu_size(args.gpu))
    except ValueError as err:
        print(f'{me}: {err}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan_dict(plan), indent=1))
    else:
        print(format_plan(plan))
        if preflight:
            print(download_sources(settings, args.use_hf))
    message = failure(settings, plan)
    if message:
        print(f'{me}: {message}', file=sys.stderr)
        return 2 if preflight else 1
    if plan.headroom_gib < 0.1 * plan.gpu_gib:
        print('  warning: headroom below 10 % of the GPU', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
