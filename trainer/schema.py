"""The hf_format dataset schema: columns, audio reading, loading and validation (design.md section 2).

Every dataset the project reads or writes (MMLU/OBQA/MMSU with speech, reference section 5) has the
columns below. This module is the one place that knows them.

Audio is always read with `datasets.Audio(decode=False)` and decoded here with soundfile: datasets 4.x
decodes (and encodes) Audio only through torchcodec + FFmpeg, which a fresh machine lacks.
"""
import io
import logging
import os
import sys
from math import gcd

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

# Arrow storage of an Audio column; building with this plain struct and casting to Audio afterwards
# avoids Audio.encode_example, which imports torchcodec even for ready-made bytes.
AUDIO_STORAGE = {'bytes': datasets.Value('binary'), 'path': datasets.Value('string')}


class SchemaError(ValueError):
    """A dataset or row that does not follow the hf_format schema."""


class AudioError(SchemaError):
    """Audio that is missing, unreadable or empty."""


def schema_error(dataset, key, field, problem, index=None):
    """Build a SchemaError naming the dataset, the row (by key, else by index) and the field."""
    row = f"row key={key!r}" if key is not None else f"row #{index}"
    return SchemaError(f"{dataset}: {row}: field {field!r}: {problem}")


def missing_column_error(dataset, col, have):
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


def load_audio(value, target_sr=SAMPLING_RATE):
    """Decode one audio cell to float32 mono at target_sr.

    value: an `Audio(decode=False)` dict {'bytes', 'path'}, a file path, or {'array', 'sampling_rate'}.
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
            x, sr = sf.read(io.BytesIO(data) if data is not None else path, dtype='float32', always_2d=True)
        except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            raise AudioError(f"cannot decode audio {where}: {e}") from e
        x = _to_mono(x)
    if x.size == 0:
        raise AudioError(f"empty audio: {where}")
    return _resample(x, sr, target_sr)


def encode_wav_bytes(array, sr=SAMPLING_RATE):
    """Encode a mono float array as 16-bit PCM WAV bytes (what builders store in the audio column)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(array, dtype=np.float32), sr, format='WAV', subtype='PCM_16')
    return buf.getvalue()


# -----------------------------------------------------------------------------
# building and loading

def rows_to_dataset(rows, extra_features=None):
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


def audio_undecoded(ds):
    """Return ds with its audio column (if any) cast to Audio(decode=False)."""
    feat = ds.features.get('audio')
    if isinstance(feat, datasets.Audio) and feat.decode:
        ds = ds.cast_column('audio', datasets.Audio(sampling_rate=feat.sampling_rate, decode=False))
    return ds


def load_hf_dataset(path_or_id, split='train'):
    """Load a local save_to_disk directory or a hub id and return one split, audio undecoded.

    Same rule as the original (reference section 2.2): `split`, else 'test' with a warning.
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


def validate_row(row, dataset, index, require_audio=True, check_audio=True):
    """Check one row against the schema; raise SchemaError naming dataset, key and field."""
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
            load_audio(audio)
        except AudioError as e:
            raise AudioError(str(err('audio', str(e)))) from e


def validate_dataset(ds, dataset, require_audio=True, check_audio=True):
    """Check every row of ds (columns first, then rows, then unique keys); raise SchemaError."""
    _check_columns(ds.column_names, dataset, require_audio)
    ds = audio_undecoded(ds)
    seen = {}
    quiet = len(ds) < 200 or not sys.stderr.isatty()
    for i, row in enumerate(tqdm(ds, desc=f"validate {dataset}", disable=quiet)):
        validate_row(row, dataset, i, require_audio=require_audio, check_audio=check_audio)
        key = row['key']
        if key in seen:
            raise schema_error(dataset, key, 'key', f"duplicate key (rows #{seen[key]} and #{i})", i)
        seen[key] = i
