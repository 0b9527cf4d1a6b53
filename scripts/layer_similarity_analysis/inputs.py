"""Teacher-forcing inputs: one text response after the text prompt and after the speech prompt
(docs/original.md §8, "Measurement").

Prompts come from ``trainer.prompts.build_messages`` and go through the processor's own chat template;
the speech prompt's ``<audio>`` tag becomes a ``{'type': 'audio'}`` content part, which the template
renders as the model's audio placeholder and the processor expands to one token per audio frame group.

Response positions: the conversation is rendered with and without the assistant turn (the latter with
the generation prompt); the tokens after the prompt, up to the first special token (the end of turn),
are the response. A sample is skipped, with a reason, when the response is empty, when the prompt is
not a token prefix of the conversation, or when the two modalities tokenise the response differently
(the original skipped on a length mismatch).

A batch holds the B text rows, then the B speech rows, left-padded: every row ends at the same position,
so a response token sits at the same index in its text row and its speech row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from trainer.prompts import AUDIO_TAG, build_messages

MODALITIES = ('text', 'speech')


class SkipSample(Exception):
    """A sample that cannot be compared; the message is the reason reported in layer_stats.json."""


def processor_messages(messages: List[Dict[str, str]]) -> List[Dict]:
    """ms-swift messages (``<audio>`` tags in strings) -> the processor's content-part form."""
    out = []
    for message in messages:
        parts = []
        for i, piece in enumerate(message['content'].split(AUDIO_TAG)):
            if i:
                parts.append({'type': 'audio'})
            if piece:
                parts.append({'type': 'text', 'text': piece})
        out.append({'role': message['role'], 'content': parts})
    return out


@dataclass
class Rendered:
    """One modality of one sample: the rendered conversation and where its response is."""
    text: str                  # chat-template text of prompt + response (+ the template's end of turn)
    response_ids: List[int]    # the response tokens
    tail: int                  # tokens after the response (the end of turn the template adds)


def render(processor: Any, prompt_type: str, modality: str, prompt_for_tts: str, response: str) -> Rendered:
    """Render one modality's conversation and locate the response tokens in it."""
    template = processor.apply_chat_template
    full = template(processor_messages(build_messages(prompt_type, modality, prompt_for_tts, answer=response)),
                    tokenize=False)
    prompt = template(processor_messages(build_messages(prompt_type, modality, prompt_for_tts)),
                      tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    full_ids = tokenizer(full, add_special_tokens=False)['input_ids']
    prompt_ids = tokenizer(prompt, add_special_tokens=False)['input_ids']
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise SkipSample(f'{modality}: the prompt is not a token prefix of prompt + response')
    after = full_ids[len(prompt_ids):]
    special = set(tokenizer.all_special_ids)
    end = next((i for i, t in enumerate(after) if t in special), len(after))
    if end == 0:
        raise SkipSample('empty response')
    return Rendered(full, after[:end], len(after) - end)


def render_pair(processor: Any, prompt_type: str, prompt_for_tts: str, response: str) -> Dict[str, Rendered]:
    """Both modalities of one sample; SkipSample when their response tokens differ."""
    pair = {m: render(processor, prompt_type, m, prompt_for_tts, response) for m in MODALITIES}
    if pair['text'].response_ids != pair['speech'].response_ids or pair['text'].tail != pair['speech'].tail:
        raise SkipSample(f"the response tokenises differently after the text prompt "
                         f"({len(pair['text'].response_ids)} tokens) and the speech prompt "
                         f"({len(pair['speech'].response_ids)} tokens)")
    return pair


def collate(processor: Any, pairs: Sequence[Dict[str, Rendered]],
            audios: Sequence[np.ndarray]) -> Tuple[Dict, torch.Tensor]:
    """Model inputs for B samples (rows 0..B-1 text, B..2B-1 speech) and the response mask [B, T].

    The processor pads on the left, so the response of sample i is the same index range in rows i and
    B + i: the ``len(response_ids)`` positions before the last ``tail`` ones.
    """
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = 'left'
    try:
        texts = [p['text'].text for p in pairs] + [p['speech'].text for p in pairs]
        inputs = processor(text=texts, audio=list(audios), return_tensors='pt', padding=True)
    finally:
        tokenizer.padding_side = side
    batch, length = len(pairs), inputs['input_ids'].shape[1]
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, p in enumerate(pairs):
        r, tail = len(p['text'].response_ids), p['text'].tail
        mask[i, length - tail - r:length - tail] = True
        for row in (i, batch + i):
            got = inputs['input_ids'][row, length - tail - r:length - tail].tolist()
            if got != p['text'].response_ids:  # the processor tokenised differently from render()
                raise RuntimeError(f'response tokens moved in batch row {row}: {got[:8]}... != '
                                   f"{p['text'].response_ids[:8]}...")
    return dict(inputs), mask
