"""hf_format datasets (docs/formats.md §1) turned into ms-swift's row form.

A user feeds the same datasets as the original; this module validates them (every bad row stops the
run before training, naming the dataset, row key and field), writes each clip once as a 16 kHz WAV
file, and writes ms-swift's custom-dataset JSONL: ``messages`` with the speech prompt, ``audios``, and
the ``tars_*`` columns the trainer and the rewards read (ms-swift passes extra columns through to the
reward functions). The text prompt travels in ``tars_text_prompt``; the trainer swaps it in for the
text-conditioned rollouts of a group.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from trainer import jsonl, prompts
from trainer.answer import LETTERS
from trainer.schema import (DEFAULT_MAX_AUDIO_SECONDS, SAMPLING_RATE, SchemaError, encode_wav_bytes, load_audio,
                            load_hf_dataset, schema_error, validate_dataset)

# Columns this module adds to every ms-swift row (one place; the trainer and rewards read them).
KEY, QUESTION, OPTIONS, ANSWER_INDEX, TEXT_PROMPT, SUBJECT = (
    'tars_key', 'tars_question', 'tars_options', 'tars_answer_index', 'tars_text_prompt', 'tars_subject')
# The row kinds of a warm-start set (prepare_warmstart_dataset)
WARMSTART_MODALITIES = ('text', 'speech', 'mixed', 'asr', 'asr_mixed', 'probe')


def _safe_name(key: str, content: str = '') -> str:
    stem = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in key)[:80]
    return f'{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}{content}.wav'


def _audio_digest(audio: Any) -> str:
    """A short digest of a row's audio as stored (embedded bytes, a file's path, size and time, or an array),
    so that a rebuilt dataset whose row keeps its key but not its clip never reuses the old clip."""
    h = hashlib.sha1()
    if isinstance(audio, dict) and audio.get('bytes'):
        h.update(audio['bytes'])
    elif isinstance(audio, dict) and audio.get('path'):
        p = Path(audio['path'])
        stat = p.stat() if p.exists() else None
        h.update(f"{p.resolve()}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}".encode())
    elif isinstance(audio, dict) and audio.get('array') is not None:
        h.update(np.asarray(audio['array'], dtype=np.float32).tobytes())
    else:
        h.update(repr(audio).encode())
    return '-' + h.hexdigest()[:10]


def write_clip(row: Dict, dataset_name: str, audio_dir: Path) -> str:
    """Write one row's audio once as a 16 kHz mono WAV under ``audio_dir``; return its path. The file name holds
    the key and a digest of the row's stored audio: a dataset rebuilt under the same name gets new clips.

    An unreadable clip raises a SchemaError naming the dataset, the row key and the field."""
    path = audio_dir / _safe_name(row['key'], _audio_digest(row.get('audio')))
    if not path.exists():
        try:
            wav = load_audio(row['audio'], SAMPLING_RATE)
        except Exception as err:
            raise schema_error(dataset_name, row['key'], 'audio', str(err)) from err
        # 16-bit PCM WAV encoded in memory, then temporary file + rename: a killed run leaves no half clip
        jsonl.write_bytes_atomic(path, encode_wav_bytes(wav, SAMPLING_RATE))
    return str(path.resolve())


def materialize_audio(ds: Any, dataset_name: str, audio_dir: Path) -> List[str]:
    """``write_clip`` for every row of ``ds`` (a ``datasets.Dataset`` in hf_format), in row order."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    return [write_clip(row, dataset_name, audio_dir)
            for row in tqdm(ds, desc=f'audio of {dataset_name}', disable=len(ds) < 50)]


def grpo_row(row: Dict, audio_path: Optional[str], prompt_type: str) -> Dict:
    """One ms-swift GRPO row: the speech prompt (when audio exists) plus the ``tars_*`` columns."""
    if audio_path:
        messages, audios = prompts.build_messages(prompt_type, 'speech'), [audio_path]
    else:
        messages, audios = prompts.build_messages(prompt_type, 'text', row['prompt_for_tts']), []
    return {
        'messages': messages,
        'audios': audios,
        KEY: row['key'],
        QUESTION: row['question'],
        OPTIONS: list(row['options']),
        ANSWER_INDEX: int(row['answer_index']),
        TEXT_PROMPT: prompts.user_text(prompt_type, 'text', row['prompt_for_tts']),
        SUBJECT: row.get('subject') or '',
    }


def warmstart_row(row: Dict, prompt_type: str, audio_path: Optional[str] = None, think: bool = True) -> Dict:
    """An SFT row whose answer is in the systhink format (the embedded default's warm start, the miniature's
    stages): the text prompt, or the speech prompt when ``audio_path`` is given.

    The thinking part is the row's ``thinking`` column when the dataset has one (the miniature world states the
    intermediate step there), else a generic sentence naming the subject; with ``think=False`` it is empty (a
    direct answer, still in the format the strict format reward accepts)."""
    letter = LETTERS[int(row['answer_index'])]
    thinking = row.get('thinking') or \
        f'The question is about {row.get("subject") or "this topic"}. Let me check each option.'
    thinking = thinking if think else ''
    answer = prompts.systhink_answer(thinking, letter)
    if audio_path:
        return {'messages': prompts.build_messages(prompt_type, 'speech', answer=answer), 'audios': [audio_path]}
    return {'messages': prompts.build_messages(prompt_type, 'text', row['prompt_for_tts'], answer=answer)}


def asr_row(row: Dict, audio_path: str) -> Dict:
    """An SFT row asking for the transcript of the row's clip (``prompts.asr_messages``), answered by the text the
    clip speaks (``prompt_for_tts``): the ASR rows of a warm start (the miniature's stage 2)."""
    return {'messages': prompts.asr_messages(row['prompt_for_tts']), 'audios': [audio_path]}


def write_jsonl(rows: Iterable[Dict], path: Path) -> int:
    """Write rows atomically (temp file, then rename; no partial file on failure); return the count."""
    return jsonl.write_atomic(path, rows)


def load_grpo_split(dataset: str, *, prompt_type: str = 'systhink', prompt_modality: str = 'mixed',
                    split: str = 'train', max_rows: Optional[int] = None,
                    max_audio_seconds: Optional[float] = DEFAULT_MAX_AUDIO_SECONDS,
                    drop_long_audio: bool = False) -> Any:
    """Load and validate one split of ``dataset`` for GRPO (nothing is written); return it as a
    ``datasets.Dataset``.

    Clips longer than ``max_audio_seconds`` (None or <= 0: no limit) stop the preparation naming their keys,
    or are left out with ``drop_long_audio`` (trainer.schema.validate_dataset)."""
    if prompt_modality not in prompts.PROMPT_MODALITIES:
        raise ValueError(f'prompt_modality must be one of {prompts.PROMPT_MODALITIES}, got {prompt_modality!r}')
    prompts.system_prompt(prompt_type)  # validates prompt_type early
    ds = load_hf_dataset(dataset, split)
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    need_audio = prompt_modality != 't'
    return validate_dataset(ds, dataset, require_audio=need_audio, check_audio=need_audio,
                            max_audio_seconds=max_audio_seconds, drop_long_audio=drop_long_audio)


def write_grpo_split(ds: Any, dataset: str, out: Path, audio_dir: Path, prompt_type: str = 'systhink',
                     prompt_modality: str = 'mixed') -> Path:
    """Write a validated split as ms-swift rows to ``out`` (clips under ``audio_dir``)."""
    paths = materialize_audio(ds, dataset, audio_dir) if prompt_modality != 't' else [None] * len(ds)
    write_jsonl((grpo_row(row, path, prompt_type) for row, path in zip(ds, paths, strict=True)), out)
    return out


def prepare_grpo_dataset(dataset: str, out_dir: Path, *, prompt_type: str = 'systhink',
                         prompt_modality: str = 'mixed', split: str = 'train', max_rows: Optional[int] = None,
                         max_audio_seconds: Optional[float] = DEFAULT_MAX_AUDIO_SECONDS,
                         drop_long_audio: bool = False) -> Path:
    """Validate ``dataset`` and write ``out_dir/grpo.jsonl`` (audio clips under ``out_dir/audio``)."""
    ds = load_grpo_split(dataset, prompt_type=prompt_type, prompt_modality=prompt_modality, split=split,
                         max_rows=max_rows, max_audio_seconds=max_audio_seconds, drop_long_audio=drop_long_audio)
    return write_grpo_split(ds, dataset, out_dir / 'grpo.jsonl', out_dir / 'audio', prompt_type, prompt_modality)


def prepare_grpo_files(dataset: str, out_dir: Path, *, prompt_type: str = 'systhink', prompt_modality: str = 'mixed',
                       split: str = 'train', max_rows: Optional[int] = None, val_split: Optional[str] = None,
                       val_rows: Optional[int] = None, max_audio_seconds: Optional[float] = DEFAULT_MAX_AUDIO_SECONDS,
                       drop_long_audio: bool = False) -> List[Path]:
    """``grpo.jsonl`` from ``split`` and, when ``val_split`` is given, ``val.jsonl`` from it (same audio limit).

    Both splits are validated before anything is written (a bad test split leaves no train file behind);
    ``val.jsonl`` is written first, so a ``grpo.jsonl`` always has its ``val.jsonl``."""
    common = dict(prompt_type=prompt_type, prompt_modality=prompt_modality, max_audio_seconds=max_audio_seconds,
                  drop_long_audio=drop_long_audio)
    train = load_grpo_split(dataset, split=split, max_rows=max_rows, **common)
    val = load_grpo_split(dataset, split=val_split, max_rows=val_rows, **common) if val_split else None
    paths = []
    if val is not None:
        paths.append(write_grpo_split(val, dataset, out_dir / 'val.jsonl', out_dir / 'val' / 'audio', prompt_type,
                                      prompt_modality))
    train_path = write_grpo_split(train, dataset, out_dir / 'grpo.jsonl', out_dir / 'audio', prompt_type,
                                  prompt_modality)
    return [train_path] + paths


def prepare_warmstart_dataset(dataset: str, out_dir: Path, prompt_type: str = 'systhink', split: str = 'train',
                              max_rows: Optional[int] = None, modality: str = 'text',
                              speech_answers: int = 0, speech_thinking: Optional[int] = None,
                              probe: Optional[Callable[[Dict, str], Dict]] = None) -> Path:
    """Write ``out_dir/warmstart.jsonl``: prompts with systhink answers for ``swift sft``; ``modality`` one of
    WARMSTART_MODALITIES: ``text`` (the text prompts), ``speech`` (the speech prompts, clips written under
    ``out_dir/audio``), ``mixed`` (each item twice, its speech prompt then its text prompt), ``asr`` (each clip's
    transcription, ``asr_row``), ``asr_mixed`` (each item's transcription then its text prompt) or ``probe`` (only
    the rows of ``probe``, which it needs: the miniature's hearing phase). With an asr
    modality the first ``speech_answers`` items also give their answered speech prompt, after the transcription.
    With ``speech_thinking`` N (``speech`` or ``mixed``), only the first N items' speech prompts are answered with
    their thinking, the later ones directly (``warmstart_row(think=False)``), as spoken question-answering data
    usually are; text prompts always carry it (the miniature's stage 2, docs/miniature.md). With ``probe`` (a
    function of the row and its clip path returning an SFT row), every spoken item also gives ``probe(row, path)``,
    after its speech prompt (the miniature's hearing rows, ``scripts.miniature.hearing.probe_row``)."""
    if modality not in WARMSTART_MODALITIES:
        raise ValueError(f'modality must be one of {", ".join(WARMSTART_MODALITIES)}, got {modality!r}')
    if speech_answers and not modality.startswith('asr'):
        raise ValueError(f'speech_answers={speech_answers} needs an asr modality, got {modality!r}')
    if probe is not None and modality == 'text':
        raise ValueError('probe rows need a spoken modality, got modality=\'text\'')
    if probe is None and modality == 'probe':
        raise ValueError('modality \'probe\' writes only probe rows: give probe')
    if speech_thinking is not None and modality not in ('speech', 'mixed'):
        raise ValueError(f'speech_thinking={speech_thinking} needs the speech or mixed modality, got {modality!r}')
    ds = load_hf_dataset(dataset, split)
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    speech = modality != 'text'
    validate_dataset(ds, dataset, require_audio=speech, check_audio=False)
    out = out_dir / 'warmstart.jsonl'
    paths = materialize_audio(ds, dataset, out_dir / 'audio') if speech else [None] * len(ds)
    rows = ds.remove_columns([c for c in ('audio', ) if c in ds.column_names])

    def records():
        for i, (row, path) in enumerate(zip(rows, paths, strict=True)):
            if modality == 'text':
                yield warmstart_row(row, prompt_type)
                continue
            if modality == 'probe':
                yield probe(row, path)
                continue
            if modality.startswith('asr'):
                yield asr_row(row, path)
            if not modality.startswith('asr') or i < speech_answers:
                yield warmstart_row(row, prompt_type, path, think=speech_thinking is None or i < speech_thinking)
            if probe is not None:
                yield probe(row, path)
            if modality.endswith('mixed'):
                yield warmstart_row(row, prompt_type)
    write_jsonl(records(), out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='hf_format dataset -> ms-swift JSONL for TARS training.')
    parser.add_argument('kind', choices=['grpo', 'warmstart'])
    parser.add_argument('--dataset', required=True, help='local save_to_disk path or hub id (hf_format)')
    parser.add_argument('--out', required=True, type=Path)
    parser.add_argument('--prompt_type', default='systhink', choices=prompts.PROMPT_TYPES)
    parser.add_argument('--prompt_modality', default='mixed', choices=prompts.PROMPT_MODALITIES)
    parser.add_argument('--split', default='train')
    parser.add_argument('--max_rows', type=int, default=None)
    parser.add_argument('--val_split', default=None, help='also write val.jsonl from this split (e.g. test)')
    parser.add_argument('--val_rows', type=int, default=None)
    parser.add_argument('--max_audio_seconds', type=float, default=DEFAULT_MAX_AUDIO_SECONDS,
                        help='grpo: longest clip accepted, in seconds (0: no limit); longer ones stop the '
                             'preparation naming their keys (default %(default)g; launchers: MAX_AUDIO_SECONDS)')
    parser.add_argument('--drop_long_audio', action='store_true',
                        help='grpo: leave clips longer than --max_audio_seconds out (count and keys printed) '
                             'instead of stopping (launchers: DROP_LONG_AUDIO=1)')
    args = parser.parse_args(argv)
    try:
        if args.kind == 'grpo':
            paths = prepare_grpo_files(args.dataset, args.out, prompt_type=args.prompt_type,
                                       prompt_modality=args.prompt_modality, split=args.split,
                                       max_rows=args.max_rows, val_split=args.val_split, val_rows=args.val_rows,
                                       max_audio_seconds=args.max_audio_seconds,
                                       drop_long_audio=args.drop_long_audio)
        else:
            modality = 'speech' if args.prompt_modality == 'a' else 'text'
            paths = [prepare_warmstart_dataset(args.dataset, args.out, args.prompt_type, args.split, args.max_rows,
                                               modality)]
    except SchemaError as err:   # a bad row or an over-long clip: one line naming dataset, key and field
        parser.exit(2, f'error: {err}\n')
    print('\n'.join(map(str, paths)))


if __name__ == '__main__':
    main()
