"""The hf_format dataset schema: columns, audio reading, loading and validation (docs/formats.md §1).

Every dataset the project reads or writes (MMLU/OBQA/MMSU with speech, docs/original.md §5) has the
columns below. This module is the one place that knows them.

Audio is always read with `datasets.Audio(decode=False)` and decoded here with soundfile: datasets 4.x
decodes (and encodes) Audio only through torchcodec + FFmpeg, which a fresh machine lacks.
"""
from __future__ import annotations

import io
import logging
import os
import struct
import sys
from math import gcd
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ('key', 'question', 'options', 'answer_index', 'prompt_for_tts', 'audio')
OPTIONAL_COLUMNS = ('source', 'subject', 'question_for_tts')
SAMPLING_RATE = 16000
LETTERS = 'ABCDEFGHIJ'
# Longest clip a training run accepts by default (trainer.data --max_audio_seconds; launchers' MAX_AUDIO_SECONDS).
# It fits the paper's data (multiple-choice questions read aloud); a longer clip is more likely a wrong
# file, and a 10-minute clip was reported to take about 14 GB on the tiny model.
DEFAULT_MAX_AUDIO_SECONDS = 60.0
LONG_AUDIO_EXAMPLES = 5   # keys named in the one-line over-long-audio message

# Arrow storage of an Audio column; building with this plain struct and casting to Audio afterwards
# avoids Audio.encode_example, which imports torchcodec even for ready-made bytes.
AUDIO_STORAGE = {'bytes': datasets.Value('binary'), 'path': datasets.Value('string')}


class SchemaError(ValueError):
    """A dataset or row that does not follow the hf_format schema."""


class AudioError(SchemaError):
    """Audio that is missing, unreadable, truncated or empty."""


class AudioTooLongError(SchemaError):
    """Clips longer than the run's max_audio_seconds (the message lists the first few keys and the count)."""


def schema_error(dataset: str, key: Any, field: str, problem: str, index: Optional[int] = None) -> SchemaError:
    """Build a SchemaError naming the dataset, the row (by key, else by index) and the field."""
    row = f"row key={key!r}" if key is not None else f"row #{index}"
    return SchemaError(f"{dataset}: {row}: field {field!r}: {problem}")


def missing_column_error(dataset: str, col: str, have: Sequence[str]) -> SchemaError:
    """A SchemaError naming the dataset, the missing column and the columns it has."""
    return SchemaError(f"{dataset}: missing column {col!r} (have: {', '.join(have)})")


# -----------------------------------------------------------------------------
# audio

def _resample(x, sr, target_sr):
    if sr == target_sr:
        return x
    g = gcd(int(sr), int(target_sr))
    return resample_poly(x, target_sr // g, sr // g).astype(np.float32)


def _to_mono(x):
    x = np.asarray(x, dtype=np.float32)
    return x.mean(axis=1) if x.ndim == 2 else x


def wav_truncation(f: BinaryIO, size: int) -> Optional[str]:
    """Why a RIFF/WAVE file is cut short, or None: its data chunk declares more bytes than the file holds.

    f: a binary file object positioned anywhere, size: its length in bytes. Written by hand because
    neither soundfile nor `wave` notices: libsndfile clamps the frame count to the bytes present and reads
    a half file as a shorter clip, and `wave` trusts the declared size (and rejects float WAVs). Only the
    chunk headers are read. Files that are not RIFF/RIFX WAVE (FLAC, RF64, ...) and streamed WAVs whose
    data size is left unset (0 or 0xFFFFFFFF) return None: soundfile judges them.
    """
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b'RIFF', b'RIFX') or head[8:12] != b'WAVE':
        return None
    order = '<' if head[:4] == b'RIFF' else '>'
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk_id, declared = struct.unpack(order + '4sI', f.read(8))
        if chunk_id == b'data':
            present = size - pos - 8
            if declared not in (0, 0xFFFFFFFF) and present < declared:
                return (f"truncated WAV: the data chunk declares {declared} bytes but only {present} are present "
                        f"({present / declared:.0%})")
            return None
        pos += 8 + declared + (declared & 1)   # chunks are padded to an even length
    return None


def load_audio(value: Any, target_sr: int = SAMPLING_RATE) -> np.ndarray:
    """Decode one audio cell to float32 mono at target_sr.

    value: an `Audio(decode=False)` dict {'bytes', 'path'}, a file path, or {'array', 'sampling_rate'}.
    A WAV whose data chunk promises more bytes than the file holds (cut short, see wav_truncation) raises
    AudioError instead of passing as a shorter clip; truncated FLAC/Ogg already fail to decode in soundfile.
    """
    if isinstance(value, dict) and 'array' in value:
        if value.get('sampling_rate') is None:
            raise AudioError("audio dict has 'array' but no 'sampling_rate'")
        x, sr, where = _to_mono(value['array']), int(value['sampling_rate']), 'in-memory array'
    else:
        if isinstance(value, (str, os.PathLike)):
            data, path = None, os.fspath(value)
        elif isinstance(value, dict):
            data, path = value.get('bytes'), value.get('path')
        else:
            raise AudioError(f"unsupported audio value of type {type(value).__name__}")
        if data is None and not path:
            raise AudioError("audio has neither bytes nor path")
        where = f"bytes (path {path!r})" if data is not None else f"file {path!r}"
        if data is None and not os.path.isfile(path):
            raise AudioError(f"audio file not found: {path!r}")
        try:
            with (io.BytesIO(data) if data is not None else open(path, 'rb')) as f:
                size = f.seek(0, io.SEEK_END)
                problem = wav_truncation(f, size)
                if problem is None:
                    f.seek(0)
                    x, sr = sf.read(f, dtype='float32', always_2d=True)
        except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            raise AudioError(f"cannot decode audio {where}: {e}") from e
        if problem is not None:
            raise AudioError(f"corrupt audio {where}: {problem}")
        x = _to_mono(x)
    if x.size == 0:
        raise AudioError(f"empty audio: {where}")
    return _resample(x, sr, target_sr)


def encode_wav_bytes(array: Any, sr: int = SAMPLING_RATE) -> bytes:
    """Encode a mono float array as 16-bit PCM WAV bytes (what builders store in the audio column)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(array, dtype=np.float32), sr, format='WAV', subtype='PCM_16')
    return buf.getvalue()


# -----------------------------------------------------------------------------
# building and loading

def rows_to_dataset(rows: Sequence[Dict[str, Any]],
                    extra_features: Optional[Dict[str, Any]] = None) -> datasets.Dataset:
    """Build a Dataset from schema rows whose 'audio' is {'bytes', 'path'} (or a path string).

    The audio column is cast to Audio(sampling_rate=16000) from plain Arrow storage, so no torchcodec
    is needed to write it. Columns outside the schema need their type in extra_features.
    """
    if not rows:
        raise ValueError("rows_to_dataset: no rows")
    cols = list(rows[0])
    features = {
        'key': datasets.Value('string'), 'question': datasets.Value('string'),
        'options': datasets.Sequence(datasets.Value('string')), 'answer_index': datasets.Value('int64'),
        'prompt_for_tts': datasets.Value('string'), 'audio': AUDIO_STORAGE,
        **{c: datasets.Value('string') for c in OPTIONAL_COLUMNS}, **(extra_features or {}),
    }
    unknown = [c for c in cols if c not in features]
    if unknown:
        raise ValueError(f"rows_to_dataset: columns {unknown} need a type in extra_features")
    data = {c: [r[c] for r in rows] for c in cols}
    if 'audio' in data:   # a bare path string becomes the {'bytes', 'path'} storage struct
        data['audio'] = [{'bytes': None, 'path': a} if isinstance(a, str) else a for a in data['audio']]
    ds = datasets.Dataset.from_dict(data, features=datasets.Features({c: features[c] for c in cols}))
    if 'audio' in cols:
        ds = ds.cast_column('audio', datasets.Audio(sampling_rate=SAMPLING_RATE))
    return ds


def audio_undecoded(ds: datasets.Dataset) -> datasets.Dataset:
    """Return ds with its audio column (if any) cast to Audio(decode=False)."""
    feat = ds.features.get('audio')
    if isinstance(feat, datasets.Audio) and feat.decode:
        ds = ds.cast_column('audio', datasets.Audio(sampling_rate=feat.sampling_rate, decode=False))
    return ds


def load_hf_dataset(path_or_id: str, split: str = 'train') -> datasets.Dataset:
    """Load a local save_to_disk directory or a hub id and return one split, audio undecoded.

    Same rule as the original (docs/original.md §2.2): `split`, else 'test' with a warning.
    """
    if os.path.exists(path_or_id):
        ds = datasets.load_from_disk(path_or_id)
    else:
        ds = datasets.load_dataset(path_or_id)
    if isinstance(ds, datasets.DatasetDict):
        if split in ds:
            ds = ds[split]
        elif 'test' in ds:
            log.warning("%s: no split %r, using 'test'", path_or_id, split)
            ds = ds['test']
        else:
            raise SchemaError(f"{path_or_id}: no split {split!r} (available: {', '.join(ds)})")
    return audio_undecoded(ds)


# -----------------------------------------------------------------------------
# validation

def _required(require_audio):
    return REQUIRED_COLUMNS if require_audio else tuple(c for c in REQUIRED_COLUMNS if c != 'audio')


def _check_columns(have, dataset, require_audio):
    for col in _required(require_audio):
        if col not in have:
            raise missing_column_error(dataset, col, list(have))


def _nonempty_str(x):
    return isinstance(x, str) and x.strip() != ''


def validate_row(row: Dict[str, Any], dataset: str, index: int, require_audio: bool = True,
                 check_audio: bool = True) -> Optional[float]:
    """Check one row against the schema; raise SchemaError naming dataset, key and field.

    Returns the clip's duration in seconds (at 16 kHz) when its audio was decoded (check_audio), else None.
    """
    _check_columns(row.keys(), dataset, require_audio)
    key = row['key']
    if not _nonempty_str(key):
        raise schema_error(dataset, None, 'key', f"must be a non-empty string, got {key!r}", index)

    def err(field, problem):
        return schema_error(dataset, key, field, problem, index)

    if not isinstance(row['question'], str):
        raise err('question', f"must be a string, got {type(row['question']).__name__}")
    options = row['options']
    if not isinstance(options, (list, tuple)) or len(options) < 2:
        raise err('options', f"must be a list of at least 2 strings, got {options!r}")
    for i, o in enumerate(options):
        if not _nonempty_str(o):
            raise err('options', f"option {i} must be a non-empty string, got {o!r}")
    if len(options) > len(LETTERS):
        raise err('options', f"at most {len(LETTERS)} options are supported, got {len(options)}")
    ai = row['answer_index']
    if isinstance(ai, bool) or not isinstance(ai, (int, np.integer)) or not 0 <= ai < len(options):
        raise err('answer_index', f"{ai!r} not in range(0, {len(options)})")
    if not _nonempty_str(row['prompt_for_tts']):
        raise err('prompt_for_tts', f"must be a non-empty string, got {row['prompt_for_tts']!r}")
    for col in OPTIONAL_COLUMNS:
        if row.get(col) is not None and not isinstance(row[col], str):
            raise err(col, f"must be a string, got {type(row[col]).__name__}")
    audio = row.get('audio')
    if require_audio and audio is None:
        raise err('audio', "missing (None)")
    if check_audio and audio is not None:
        try:
            return len(load_audio(audio)) / SAMPLING_RATE
        except AudioError as e:
            raise AudioError(str(err('audio', str(e)))) from e
    return None


def long_audio_message(dataset: str, long_rows: List[Tuple[str, float]], max_audio_seconds: float,
                       dropped: bool = False) -> str:
    """One line: the count of over-long clips and the first LONG_AUDIO_EXAMPLES keys (with seconds).

    long_rows: [(key, seconds)] in row order."""
    shown = ", ".join(f"{k!r} ({s:.1f} s)" for k, s in long_rows[:LONG_AUDIO_EXAMPLES])
    more = f", ... ({len(long_rows)} in all)" if len(long_rows) > LONG_AUDIO_EXAMPLES else ""
    return (f"{dataset}: field 'audio': {'dropped ' if dropped else ''}{len(long_rows)} clip(s) longer than "
            f"max_audio_seconds={max_audio_seconds:g}: keys {shown}{more}")


def validate_dataset(ds: datasets.Dataset, dataset: str, *, require_audio: bool = True, check_audio: bool = True,
                     max_audio_seconds: Optional[float] = None, drop_long_audio: bool = False) -> datasets.Dataset:
    """Check every row of ds (columns first, then rows, then unique keys); raise SchemaError. Returns ds.

    max_audio_seconds (with check_audio; None or <= 0: no limit): clips longer than this stop the run with
    AudioTooLongError naming the first few keys and the count, after every row was checked, or, with
    drop_long_audio, are left out of the returned dataset (the count and keys are printed to stderr).
    """
    _check_columns(ds.column_names, dataset, require_audio)
    ds = audio_undecoded(ds)
    limit = max_audio_seconds if check_audio and max_audio_seconds and max_audio_seconds > 0 else None
    seen, long_rows, long_index = {}, [], set()
    quiet = len(ds) < 200 or not sys.stderr.isatty()
    for i, row in enumerate(tqdm(ds, desc=f"validate {dataset}", disable=quiet)):
        seconds = validate_row(row, dataset, i, require_audio=require_audio, check_audio=check_audio)
        key = row['key']
        if key in seen:
            raise schema_error(dataset, key, 'key', f"duplicate key (rows #{seen[key]} and #{i})", i)
        seen[key] = i
        if limit is not None and seconds is not None and seconds > limit:
            long_rows.append((key, seconds))
            long_index.add(i)
    if not long_rows:
        return ds
    if not drop_long_audio or len(long_rows) == len(ds):
        why = ("every row would be dropped" if drop_long_audio else "raise the limit (--max_audio_seconds, env "
               "MAX_AUDIO_SECONDS) or drop them (--drop_long_audio, env DROP_LONG_AUDIO=1)")
        raise AudioTooLongError(f"{long_audio_message(dataset, long_rows, limit)}; {why}")
    print(long_audio_message(dataset, long_rows, limit, dropped=True), file=sys.stderr)
    return ds.select([i for i in range(len(ds)) if i not in long_index])
