"""Helpers shared by the dataset builders (docs/original.md §5; moved out of voicebench.py and mmlu.py).

  - clip files: wav_name, write_wav_atomic (through trainer.jsonl's atomic writes), save_dataset_dict;
  - the build report: RowError (a row that cannot be converted without guessing), new_report,
    report_drop, report_note, write_report, summary_text;
  - the common driver of the converting builders (VoiceBench, CUHK MMSU): stage_clip, convert_rows,
    check_output_free, save_build, run_build.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import datasets
import numpy as np
from tqdm import tqdm

from trainer import jsonl
from trainer.schema import (SAMPLING_RATE, AudioError, encode_wav_bytes, load_audio, rows_to_dataset,
                            validate_dataset)

OUTPUT_SPLIT = 'train'
NOTE_EXAMPLES = 5   # keys listed per note in report.json
PathLike = Union[str, os.PathLike]
# (where: a dict locating the source row, build() -> (row without audio, notes, audio value))
BuildItem = Tuple[Dict[str, Any], Callable[[], Tuple[Dict[str, Any], List[str], Any]]]

# -----------------------------------------------------------------------------
# clip files

def wav_name(key: str) -> str:
    """File name of a key's clip: characters outside [A-Za-z0-9@._-] become '_'.

    Not trainer.data's clip name (a SHA-1 suffix, '@' replaced): the MMLU clip caches and their sidecars
    are named by this one, so changing it would make every existing cache synthesise its clips again."""
    return re.sub(r'[^A-Za-z0-9@._-]', '_', key) + '.wav'


def write_wav_atomic(path: PathLike, audio: np.ndarray, sr: int = SAMPLING_RATE) -> None:
    """Write 16-bit PCM WAV through a temporary file and a rename, so a clip is whole or absent."""
    jsonl.write_bytes_atomic(path, encode_wav_bytes(audio, sr))


def save_dataset_dict(dsd: datasets.DatasetDict, hf_dir: PathLike) -> None:
    """``save_to_disk`` into a temporary folder next to ``hf_dir``, then swap it in: a killed build leaves
    the old set or none, never a half-written one. (A folder cannot be renamed over a non-empty one, so the
    old set is removed just before the rename; trainer.jsonl's atomic writes are for single files.)"""
    hf_dir = Path(hf_dir)
    tmp = hf_dir.parent / f".{hf_dir.name}.{os.getpid()}.tmp"
    try:
        dsd.save_to_disk(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    os.replace(tmp, hf_dir)

# -----------------------------------------------------------------------------
# row errors and the report


class RowError(ValueError):
    """A source row that cannot become a schema row without guessing. code: a short reason class."""

    def __init__(self, code: str, detail: str, key: Optional[str] = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.key = code, detail, key


def new_report(dataset: str, source: Dict[str, Any]) -> Dict[str, Any]:
    """An empty build report (rows read / kept / dropped, drops by reason, notes) for report.json."""
    return {'dataset': dataset, 'source': source, 'output_split': OUTPUT_SPLIT, 'rows_read': 0,
            'rows_kept': 0, 'rows_dropped': 0, 'dropped_by_reason': {}, 'dropped': [], 'notes': {}}


def report_drop(report: Dict[str, Any], key: Optional[str], code: str, detail: str, **where: Any) -> None:
    """Record one left-out row: its key (None when it has none), reason class, detail and location."""
    report['dropped'].append({'key': key, 'reason': code, 'detail': detail, **where})
    report['rows_dropped'] += 1
    report['dropped_by_reason'][code] = report['dropped_by_reason'].get(code, 0) + 1


def report_note(report: Dict[str, Any], note: str, key: str) -> None:
    """Count a kept row that needed care (e.g. a multi-line question); list the first few keys."""
    n = report['notes'].setdefault(note, {'count': 0, 'examples': []})
    n['count'] += 1
    if len(n['examples']) < NOTE_EXAMPLES:
        n['examples'].append(key)

# -----------------------------------------------------------------------------
# audio, assembly, saving


def stage_clip(audio_value: Any, path: PathLike) -> float:
    """Decode one clip (any soundfile format and rate) to 16 kHz mono, write it as 16-bit WAV at path,
    and return its duration in seconds. Raises AudioError for missing, unreadable or empty audio."""
    x = load_audio(audio_value)
    if not np.all(np.isfinite(x)):
        raise AudioError("audio has non-finite samples")
    write_wav_atomic(path, x)
    return len(x) / SAMPLING_RATE


def convert_rows(items: Iterable[BuildItem], wav_dir: PathLike, report: Dict[str, Any], total: Optional[int] = None,
                 desc: str = 'rows') -> List[Dict[str, Any]]:
    """Turn source items into schema rows whose audio is a staged 16 kHz wav path.

    items yields (where, build) with where a dict locating the row (split, row) and build() returning
    (row without audio, notes, audio value) or raising RowError / AudioError. Dropped rows go to the
    report; a key seen before is dropped as 'duplicate_key'.
    """
    wav_dir = Path(wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    kept, seen, names, seconds = [], {}, set(), 0.0
    for where, build in tqdm(items, total=total, desc=desc, unit='row', mininterval=2):
        report['rows_read'] += 1
        key = None
        try:
            row, notes, audio_value = build()
            key = row['key']
            if key in seen:
                raise RowError('duplicate_key', f"key already used by {seen[key]}", key)
            name = wav_name(key)
            if name in names:    # two keys that differ only in characters wav_name replaces
                name = f"{name[:-len('.wav')]}~{len(kept)}.wav"
            path = wav_dir / name
            seconds += stage_clip(audio_value, path)
        except RowError as e:
            report_drop(report, e.key if e.key is not None else key, e.code, e.detail, **where)
            continue
        except AudioError as e:
            report_drop(report, key, 'bad_audio', str(e), **where)
            continue
        seen[key] = where
        names.add(path.name)
        for note in notes:
            report_note(report, note, key)
        kept.append({**row, 'audio': str(path)})
    report['rows_kept'] = len(kept)
    report['audio_seconds'] = round(seconds, 2)
    return kept


def check_output_free(out_dir: PathLike, overwrite: bool) -> None:
    """Refuse to replace an existing DIR/hf or DIR/report.json unless overwrite."""
    out_dir = Path(out_dir)
    taken = [p for p in (out_dir / 'hf', out_dir / 'report.json') if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, taken))} already exist(s); pass overwrite=True (--overwrite) "
                              f"to replace")


def write_report(out_dir: PathLike, report: Mapping[str, Any]) -> None:
    """DIR/report.json, written atomically."""
    jsonl.write_json_atomic(Path(out_dir) / 'report.json', report, indent=2)


def save_build(out_dir: PathLike, rows: List[Dict[str, Any]], report: Dict[str, Any],
               extra_features: Optional[Dict[str, Any]], name: str,
               t0: Optional[float] = None) -> datasets.DatasetDict:
    """Validate rows, save DIR/hf ({'train': ...}, audio bytes embedded) and DIR/report.json.

    With no row kept, only the report is written and a RuntimeError raised. t0: perf_counter() at the
    start of the build, for the report's seconds_spent.
    """
    t0 = time.perf_counter() if t0 is None else t0
    out_dir = Path(out_dir)
    hf_dir = out_dir / 'hf'
    if not rows:
        report['seconds_spent'] = round(time.perf_counter() - t0, 2)
        write_report(out_dir, report)
        raise RuntimeError(f"{name}: no row kept out of {report['rows_read']}; see {out_dir / 'report.json'}")
    ds = rows_to_dataset(rows, extra_features=extra_features)
    validate_dataset(ds, f"{name}[{OUTPUT_SPLIT}]", check_audio=False)   # every clip was decoded when staged
    save_dataset_dict(datasets.DatasetDict({OUTPUT_SPLIT: ds}), hf_dir)
    report['seconds_spent'] = round(time.perf_counter() - t0, 2)
    write_report(out_dir, report)
    return datasets.load_from_disk(str(hf_dir))


def run_build(out_dir: PathLike, name: str, report: Dict[str, Any], items: Iterator[BuildItem], *,
              total: Optional[int], extra_features: Optional[Dict[str, Any]], overwrite: bool,
              limit: Optional[int] = None) -> datasets.DatasetDict:
    """Common driver: stage clips in a temporary folder under out_dir, save, clean up.

    limit: convert only the first `limit` source items (a quick preview build; recorded in the report
    as row_limit). None converts everything.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_output_free(out_dir, overwrite)
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"limit={limit} must be >= 1 (or None for every row)")
        report['row_limit'] = int(limit)
        items = itertools.islice(items, int(limit))
        total = min(total, int(limit)) if total is not None else int(limit)
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_dir = out_dir / f".wav.{os.getpid()}.tmp"
    try:
        rows = convert_rows(items, wav_dir, report, total=total, desc=name)
        report['dropped_by_reason'] = dict(sorted(report['dropped_by_reason'].items()))
        return save_build(out_dir, rows, report, extra_features, name, t0)
    finally:
        shutil.rmtree(wav_dir, ignore_errors=True)


def summary_text(report: Mapping[str, Any]) -> str:
    """The report without the per-row drop list (what the CLI prints)."""
    return json.dumps({k: v for k, v in report.items() if k != 'dropped'}, indent=2, ensure_ascii=False)
