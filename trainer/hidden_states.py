"""Mean-pooled per-layer hidden states of the completion tokens, taken inside a forward the GRPO step
already does (docs/design.md §3; the original runs a second full forward with every hidden state,
docs/original.md §2.5).

Forward hooks on the LLM's decoder layers pool each layer's output over the completion tokens as the
forward runs, so a rollout keeps an [L, D] vector, never [L, T, D]. Layer numbering follows
``output_hidden_states``: layer l (1..L) is the output of decoder layer l, and layer L is taken after
the final norm, as transformers reports it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from trainer.tars_math import masked_mean_pool


def llm_layers_and_norm(model: nn.Module) -> Tuple[nn.ModuleList, nn.Module]:
    """The decoder layers and the final norm of the language model inside ``model``.

    The language-model path comes from ms-swift's model architecture registry (``model_meta.model_arch``,
    e.g. ``thinker.model`` for Qwen2.5-Omni); a plain causal LM falls back to ``model.model``.
    """
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    arch = getattr(getattr(base, 'model_meta', None), 'model_arch', None)
    paths = list(getattr(arch, 'language_model', None) or []) + ['model', 'model.language_model']
    for path in paths:
        try:
            llm = base.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(getattr(llm, 'layers', None), nn.ModuleList) and hasattr(llm, 'norm'):
            return llm.layers, llm.norm
    raise ValueError(f'cannot find the decoder layers of {type(base).__name__} (looked at {paths}); '
                     'the representation reward needs them')


class PooledStateCapture:
    """Pools the language model's layer outputs over a token mask during the forwards run in ``pooling``."""

    def __init__(self, model: nn.Module) -> None:
        layers, norm = llm_layers_and_norm(model)
        self.modules: List[nn.Module] = list(layers[:-1]) + [norm]
        self.pooled: Optional[torch.Tensor] = None  # [B, L, D] float32 after a forward

    @property
    def num_layers(self) -> int:
        return len(self.modules)

    @contextmanager
    def pooling(self, token_mask: torch.Tensor) -> Iterator[None]:
        """Hooks active for the forwards in this block; ``token_mask`` [B, T] marks the tokens to pool."""
        slots: List[Optional[torch.Tensor]] = [None] * len(self.modules)

        def make_hook(index):
            def hook(_module, _inputs, output):
                hidden = output[0] if isinstance(output, (tuple, list)) else output
                if hidden.dim() != 3 or hidden.shape[:2] != token_mask.shape:
                    raise RuntimeError(f'layer output {tuple(hidden.shape)} does not match the token mask '
                                       f'{tuple(token_mask.shape)} (padding-free batches are not supported)')
                slots[index] = masked_mean_pool(hidden.detach(), token_mask)
            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self.modules)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
        if any(s is None for s in slots):
            raise RuntimeError('the forward did not run every decoder layer')
        self.pooled = torch.stack(slots, dim=1)  # [B, L, D]


def completion_token_mask(input_ids: torch.Tensor, completion_mask: torch.Tensor,
                          end_token_ids: Sequence[int],
                          generated_lengths: Optional[Sequence[Optional[int]]] = None) -> torch.Tensor:
    """Full-frame mask [B, T] of the completion tokens whose states are pooled: exactly the generated
    tokens, without the end-of-turn token that closes them.

    ``completion_mask`` [B, C] covers the last C positions of ``input_ids`` [B, T] (ms-swift's
    logits_to_keep frame) and marks the trained response tokens: the generated ones, then whatever the
    template appends after them (e.g. ``<|im_end|>`` + newline after a truncated Qwen completion). The
    completion ends at its first marked token in ``end_token_ids`` (generation stops at the first one; a
    template suffix starts with one): that token and everything after it are left out, as the original
    drops the ``<|end|>`` row, and a truncated completion keeps all its generated tokens.
    ``generated_lengths`` [B] (the rollout engine's token counts, None where unknown) further keeps at
    most the first that many marked tokens of each row, for a template whose suffix has no end token.
    """
    batch, total = input_ids.shape
    c = completion_mask.shape[1]
    if generated_lengths is not None and len(generated_lengths) != batch:
        raise ValueError(f'{len(generated_lengths)} generated lengths for a batch of {batch}')
    mask = torch.zeros(batch, total, dtype=torch.bool, device=completion_mask.device)
    mask[:, total - c:] = completion_mask.bool()
    ends = torch.tensor(sorted(set(end_token_ids)), dtype=input_ids.dtype, device=input_ids.device)
    for row in range(batch):
        positions = mask[row].nonzero().flatten()
        keep = positions.numel()
        n = generated_lengths[row] if generated_lengths is not None else None
        if n is not None:
            keep = min(keep, n)
        is_end = torch.isin(input_ids[row, positions[:keep]], ends).nonzero().flatten()
        if is_end.numel():
            keep = int(is_end[0])
        mask[row, positions[keep:]] = False
    return mask


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """The forwards in this block run without dropout (the model otherwise stays in train mode).

    The original takes the hidden states of the representation reward in a separate ``model.eval()``
    forward; ours come from the old-log-prob forward, which ms-swift runs in train mode (LoRA dropout
    0.05 active). Only the dropout modules are switched, so the trainer's own ``model.training`` checks
    (metrics mode) are unchanged; attention dropout of the presets' configs is 0.
    """
    switched = [m for m in model.modules() if isinstance(m, _DROPOUT) and m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True
