"""Prompt texts of the original (docs/original.md §2.2): the one place for them.

``prompt_type`` picks the answer suffix appended after the question and, for ``systhink``, the
system prompt. ``prompt_modality`` picks what the user turn holds: the speech (``a``), the text
(``t``) or, for TARS, both in one group (``mixed``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

# The think system prompt (docs/original.md §2.2; same text as Qwen's "think" prompt).
SYSTHINK_SYSTEM = (
    'A conversation between User and Assistant. The user asks a question, and the Assistant solves it. '
    'The assistant first thinks about the reasoning process in the mind and then provides the user with the '
    'answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> '
    'tags, respectively, i.e., <think>[THINKING PROCESS]</think><answer>The answer is [CHOICE].</answer>')

ANSWER_SUFFIX = {
    'none': '',
    'systhink': '',
    'simple': '\nAnswer the multiple choice question.',
    'cot': '\nSolve the multiple-choice question step-by-step.',
    # the original's evaluation-only suffixes (docs/usage.md, "Evaluation, inference, LoRA merge");
    # "\\boxed{}" is a backslash and "boxed{}"
    'boxed': '\nSolve the multiple-choice question, write the final selected option letter wrapped in \\boxed{}',
    'cotboxed': ('\nSolve the multiple-choice question step-by-step. At the end, write the final selected option '
                 'letter wrapped in \\boxed{}'),
    'selfasrcot': ('\nTranscribe the audio to text, then solve the multiple-choice question step-by-step, finally '
                   'write the answer like: The answer is Option X. Use <sep> as a separator.'),
}
# Training, preference data and inference use the original's training prompts; evaluation (eval.qa) may
# also use the evaluation-only ones.
PROMPT_TYPES = ('none', 'systhink', 'simple', 'cot')
EVAL_PROMPT_TYPES = tuple(ANSWER_SUFFIX)
PROMPT_MODALITIES = ('a', 't', 'mixed')
AUDIO_TAG = '<audio>'  # ms-swift's media placeholder; its template expands it per model
# The original's ASR instruction (docs/original.md §6.2), without a system message of ours (a template may add its
# default one): eval.asr and the ASR rows of a warm start (trainer.data.asr_row) ask for a clip's transcript with it.
ASR_PROMPT = 'Transcribe the audio clip into text.'


def system_prompt(prompt_type: str) -> Optional[str]:
    """The system prompt for ``prompt_type`` (only ``systhink`` has one)."""
    _check_type(prompt_type)
    return SYSTHINK_SYSTEM if prompt_type == 'systhink' else None


def user_text(prompt_type: str, modality: str, prompt_for_tts: str = '') -> str:
    """User-turn content: ``<audio>`` + suffix for speech, ``prompt_for_tts`` + suffix for text,
    ``<audio>`` + ``prompt_for_tts`` + suffix for speech_text."""
    _check_type(prompt_type)
    if modality == 'speech':
        return AUDIO_TAG + ANSWER_SUFFIX[prompt_type]
    if modality == 'speech_text':  # the audio is a stimulus and the question is text (CUHK MMSU, docs/original.md §6.1)
        return AUDIO_TAG + prompt_for_tts + ANSWER_SUFFIX[prompt_type]
    if modality == 'text':
        if not prompt_for_tts:
            raise ValueError('a text prompt needs the prompt_for_tts text')
        return prompt_for_tts + ANSWER_SUFFIX[prompt_type]
    raise ValueError(f'modality must be speech, text or speech_text, got {modality!r}')


def build_messages(prompt_type: str, modality: str, prompt_for_tts: str = '',
                   answer: Optional[str] = None) -> List[Dict[str, str]]:
    """ms-swift ``messages`` for one prompt (plus the assistant turn when ``answer`` is given)."""
    messages = []
    system = system_prompt(prompt_type)
    if system:
        messages.append({'role': 'system', 'content': system})
    messages.append({'role': 'user', 'content': user_text(prompt_type, modality, prompt_for_tts)})
    if answer is not None:
        messages.append({'role': 'assistant', 'content': answer})
    return messages


def asr_messages(transcript: Optional[str] = None) -> List[Dict[str, str]]:
    """ms-swift ``messages`` asking for the transcript of the one clip of the row (``<audio>`` + ASR_PROMPT),
    with the assistant turn when ``transcript`` is given."""
    messages = [{'role': 'user', 'content': AUDIO_TAG + ASR_PROMPT}]
    if transcript is not None:
        messages.append({'role': 'assistant', 'content': transcript})
    return messages


def systhink_answer(thinking: str, letter: str) -> str:
    """An assistant answer in the systhink format that the strict format reward accepts."""
    return f'<think>{thinking}</think><answer>The answer is {letter}.</answer>'


def _check_type(prompt_type: str) -> None:
    if prompt_type not in ANSWER_SUFFIX:
        raise ValueError(f'prompt_type must be one of {EVAL_PROMPT_TYPES}, got {prompt_type!r}')
