"""The measurement (docs/original.md §8): teacher-force the same response after the text and the speech
prompt and compare the response hidden states of every layer.

Layers are those of ``output_hidden_states`` without the embeddings: layer l (1..L) is the output of
decoder layer l, layer L taken after the final norm (``trainer.hidden_states``). Instead of asking the
model for every hidden state (the original: [L+1, T, D] per sequence, batch size 1), forward hooks on
those L modules turn each layer's output into the two per-sample measures as the forward runs, and the
forward stops after the last layer (the logits are not needed). Memory per sample is therefore what one
layer's forward needs, whatever the number of layers, and any batch size works: a batch holds the text
and the speech rows of B samples, left-padded so that their response tokens are aligned.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from trainer.hidden_states import PooledStateCapture
from trainer.schema import load_audio

from .inputs import SkipSample, collate, render_pair
from .stats import RunningStats, pair_similarities, summary

log = logging.getLogger(__name__)


class _LastLayerDone(Exception):
    """Raised by the last layer's hook: the rest of the forward (the LM head) is not needed."""


class LayerSimilarityMeter:
    """Hooks on the LLM's L layer outputs that accumulate both measures over sample pairs."""

    def __init__(self, thinker: torch.nn.Module) -> None:
        # the same L modules (and layer numbering) as the representation reward's capture
        self.modules = PooledStateCapture(thinker).modules
        self.thinker = thinker
        self.token = RunningStats(len(self.modules))
        self.pooled = RunningStats(len(self.modules))

    @property
    def num_layers(self) -> int:
        return len(self.modules)

    @contextmanager
    def _hooks(self, mask: torch.Tensor, token: List, pooled: List):
        batch = mask.shape[0]

        def make_hook(index):
            def hook(_module, _inputs, output):
                hidden = output[0] if isinstance(output, (tuple, list)) else output
                if hidden.shape[0] != 2 * batch or hidden.shape[1] != mask.shape[1]:
                    raise RuntimeError(f'layer output {tuple(hidden.shape)} does not match {2 * batch} rows x '
                                       f'{mask.shape[1]} tokens')
                token[index], pooled[index] = pair_similarities(hidden[:batch], hidden[batch:], mask)
                if index == len(self.modules) - 1:
                    raise _LastLayerDone
            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self.modules)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def add_batch(self, inputs: Dict, mask: torch.Tensor) -> None:
        """Run one batch (rows 0..B-1 text, B..2B-1 speech) and add its B samples to the statistics."""
        params = next(self.thinker.parameters())
        inputs = {k: v.to(params.device) for k, v in inputs.items()}
        if 'input_features' in inputs:
            inputs['input_features'] = inputs['input_features'].to(params.dtype)
        token: List[Optional[torch.Tensor]] = [None] * self.num_layers
        pooled: List[Optional[torch.Tensor]] = [None] * self.num_layers
        with self._hooks(mask.to(params.device), token, pooled):
            try:
                self.thinker(**inputs, use_cache=False)
            except _LastLayerDone:
                pass
        if any(t is None for t in token):
            raise RuntimeError('the forward did not reach every layer')
        self.token.add(torch.stack(token))    # [L, B]
        self.pooled.add(torch.stack(pooled))


def measure(thinker: torch.nn.Module, processor: Any, rows: Sequence[Dict], responses: Sequence[Optional[str]], *,
            prompt_type: str = 'systhink', batch_size: int = 8, progress: bool = False) -> Dict:
    """Layer statistics over ``rows`` (hf_format rows, audio undecoded) with their text ``responses``
    (None: no response for that row). Returns ``stats.summary`` plus the skipped samples and timing."""
    meter = LayerSimilarityMeter(thinker)
    skipped: List[Dict[str, str]] = []
    start = time.perf_counter()
    pending = []  # (pair, audio) waiting for a full batch

    def flush() -> None:
        if pending:
            inputs, mask = collate(processor, [p for p, _ in pending], [a for _, a in pending])
            meter.add_batch(inputs, mask)
            pending.clear()

    for row, response in tqdm(list(zip(rows, responses, strict=True)), desc='layer similarity', disable=not progress):
        try:
            if response is None:
                raise SkipSample('no text response for this key')
            pair = render_pair(processor, prompt_type, row['prompt_for_tts'], response)
        except SkipSample as why:
            skipped.append({'key': row['key'], 'reason': str(why)})
            continue
        pending.append((pair, load_audio(row['audio'], _sampling_rate(processor))))
        if len(pending) == batch_size:
            flush()
    flush()
    if skipped:
        log.warning('%d of %d samples skipped, e.g. %s: %s', len(skipped), len(rows), skipped[0]['key'],
                    skipped[0]['reason'])
    result = summary(meter.token, meter.pooled)
    result.update(n_skipped=len(skipped), skipped=skipped, measure_seconds=time.perf_counter() - start)
    return result


def _sampling_rate(processor: Any) -> int:
    """The audio feature extractor's rate (``feature_extractor``; Phi-4-MM's processor calls it ``audio_processor``)."""
    extractor = getattr(processor, 'feature_extractor', None) or getattr(processor, 'audio_processor')
    return extractor.sampling_rate
