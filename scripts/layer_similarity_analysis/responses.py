"""The text responses that are teacher-forced (docs/original.md §8: the model's own text-mode evaluation
output, correct or not).

Two sources:
* a file of model outputs, one per question key: JSONL lines ``{"key": ..., "output": ...}`` (the
  original's field name ``llm_output`` is accepted too), or a JSON list of such objects, or a JSON object
  mapping key -> output string or -> such an object. The text-mode results of ``eval.qa``
  (``<out>/<model>/<dataset>/text_<prompt_type>/results.jsonl``) are such a file; a directory stands for
  its ``results.jsonl``; ``eval_results_path`` finds it from the model and the dataset label. Items with
  a null output (failed) count as missing and their samples are skipped;
* generated on the fly: greedy decoding of the text prompt by the model under analysis, batched.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from trainer.engine import resolve_model
from trainer.prompts import build_messages

from .inputs import processor_messages

OUTPUT_FIELDS = ('output', 'llm_output')
RESULTS_FILE = 'results.jsonl'  # eval.qa's per-item results of one (model, dataset, mode, prompt type)
log = logging.getLogger(__name__)


def eval_results_path(eval_dir: str, model: str, dataset_label: str, prompt_type: str = 'systhink',
                      base_model: Optional[str] = None) -> Path:
    """Where ``eval.qa --out eval_dir --dataset dataset_label=...`` put ``model``'s text-mode results."""
    name = resolve_model(model, base_model).name
    return Path(eval_dir) / name / dataset_label / f'text_{prompt_type}' / RESULTS_FILE


def _output_of(record: Any, where: str) -> Optional[str]:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for field in OUTPUT_FIELDS:
            if isinstance(record.get(field), str):
                return record[field]
        if any(field in record for field in OUTPUT_FIELDS):
            return None  # present but null: a failed item
    raise ValueError(f'{where}: no text output (expected a string field {" or ".join(OUTPUT_FIELDS)})')


def load_text_responses(path: str) -> Dict[str, str]:
    """Key -> text response from a JSONL or JSON file, or a directory holding ``results.jsonl``."""
    path = str(Path(path) / RESULTS_FILE) if Path(path).is_dir() else str(path)
    text = Path(path).read_text(encoding='utf-8')
    if path.endswith('.jsonl'):
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        if isinstance(data, dict):
            records = [{'key': k, 'output': _output_of(v, f'{path}: key {k!r}')} for k, v in data.items()]
        else:
            records = data
    out: Dict[str, str] = {}
    modes = set()
    for i, record in enumerate(records):
        if not isinstance(record, dict) or 'key' not in record:
            raise ValueError(f'{path}: record {i} has no "key"')
        modes.add(record.get('mode', 'text'))
        output = _output_of(record, f'{path}: key {record["key"]!r}')
        if output is not None:
            out[str(record['key'])] = output
    if modes - {'text'}:
        log.warning('%s holds outputs of mode(s) %s, not text-mode outputs', path, sorted(modes - {'text'}))
    return out


@contextmanager
def last_position_logits(model: nn.Module) -> Iterator[None]:
    """Within the block, the LM head projects only the last position: greedy decoding reads nothing else,
    and the prompt's full logits ([B, T, vocab], 1.2 GB for 8 prompts of the tiny model) are not built."""
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0][:, -1:],) + tuple(args[1:]))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def generate_text_responses(thinker: nn.Module, processor: Any, rows: Sequence[Dict], prompt_type: str,
                            max_new_tokens: int, batch_size: int = 8) -> List[str]:
    """Greedy answers of ``thinker`` to the text prompts of ``rows`` (special tokens removed)."""
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = 'left'
    device = next(thinker.parameters()).device
    answers: List[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            prompts = [processor.apply_chat_template(
                processor_messages(build_messages(prompt_type, 'text', r['prompt_for_tts'])),
                tokenize=False, add_generation_prompt=True) for r in chunk]
            inputs = processor(text=prompts, return_tensors='pt', padding=True).to(device)
            with last_position_logits(thinker):
                out = thinker.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)
            answers += processor.batch_decode(out[:, inputs['input_ids'].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers
