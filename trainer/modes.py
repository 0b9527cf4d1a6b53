"""Evaluation input modes (docs/original.md §6.1, under clear names) and the request each builds.

| mode        | the user turn                              | adapter | original name            |
|-------------|--------------------------------------------|---------|--------------------------|
| `audio`     | the speech (`<audio>` + suffix)            | on      | audio_mode2              |
| `text`      | `prompt_for_tts` + suffix                  | on      | text_mode2               |
| `asr`       | an ASR transcript of the speech + suffix   | on      | whisper_mode2 / asr_mode2 |
| `text_base` | `prompt_for_tts` + suffix                  | off     | text_mode0               |
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from trainer import prompts

MODES = ('audio', 'text', 'asr', 'text_base')
SPEECH_MODES = ('audio', )


def uses_adapter(mode: str) -> bool:
    """Whether ``mode`` answers with the LoRA adapter on (every mode but the text-only baseline)."""
    return mode != 'text_base'


def build_request(mode: str, prompt_type: str, prompt_for_tts: str, audio_path: Optional[str] = None, *,
                  transcript: Optional[str] = None, audio_with_text: bool = False) -> Tuple[List[Dict], List[str]]:
    """(messages, audios) for one item in ``mode``; ``audio_with_text`` adds the question text after the
    audio in the audio mode (datasets whose audio is a stimulus, e.g. CUHK MMSU)."""
    if mode == 'audio':
        if not audio_path:
            raise ValueError('the audio mode needs the item audio')
        modality = 'speech_text' if audio_with_text else 'speech'
        return prompts.build_messages(prompt_type, modality, prompt_for_tts), [audio_path]
    if mode in ('text', 'text_base'):
        return prompts.build_messages(prompt_type, 'text', prompt_for_tts), []
    if mode == 'asr':
        if transcript is None:
            raise ValueError('the asr mode needs a transcript')
        return prompts.build_messages(prompt_type, 'text', transcript or ' '), []
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
