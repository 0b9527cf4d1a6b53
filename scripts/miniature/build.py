"""The miniature world as an hf_format dataset with espeak-ng speech (docs/formats.md §1, docs/miniature.md).

    python -m scripts.miniature.build --out DIR [--seed 0] [--n_train 6000] [--n_validation 300]
                                      [--n_test 1200] [--n_towns 24] [--no_speech] [--max_items N] [--overwrite]

Writes DIR/hf: a DatasetDict with the splits train, validation and test (every project tool reads it:
``trainer.data --split train``, ``eval.qa`` reads test by default), and DIR/report.json. Columns: the schema's
(key, question, options, answer_index, prompt_for_tts, audio, source='miniature', subject=the template,
question_for_tts) plus thinking (the intermediate step, for systhink answers), holdout (the split's hold-out
key, values joined by '|'), tts_voice, tts_rate and tts_pitch.

Speech plan (``speech_plan``): each training item gets a seeded voice from TRAIN_VOICES, a rate from RATES and a
pitch from PITCHES; validation and test items are spoken by HELD_OUT_VOICE, never heard in training (with the
same rates and pitches), so the test measures speech in a new voice as well as new question values.

Clips are cached in DIR/wav, one per key and spoken text and voice, rate and pitch (the file name holds a hash
of the four), so a killed build resumes where it stopped and a rebuild with another plan makes only the clips
that changed. An existing DIR/hf is replaced only with --overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import datasets
from tqdm import tqdm

from scripts.dataset_building.common import (PathLike, check_output_free, new_report, save_dataset_dict,
                                             summary_text, wav_name, write_report, write_wav_atomic)
from scripts.dataset_building.tts import EspeakTTS, ensure_available
from scripts.miniature.world import SOURCE, SPLITS, Item, World, WorldConfig, generate_world
from trainer.schema import SAMPLING_RATE, load_audio, rows_to_dataset, validate_dataset

# espeak-ng voices (a language voice, optionally '+' a variant); HELD_OUT_VOICE speaks validation and test only
TRAIN_VOICES = ('en-us', 'en-gb-x-rp', 'en-gb-scotland', 'en-029', 'en-us+f2', 'en-us+m3')
# a new speaker of a trained accent (espeak's fourth female variant of en-us); the accent 'en-us-nyc' measured the
# same accuracy (docs/miniature.md, "What was tried")
HELD_OUT_VOICE = 'en-us+f4'
HELD_OUT_SPLITS = ('validation', 'test')
RATES = (145, 160, 175, 190, 205)     # words per minute (espeak's default 175 in the middle)
PITCHES = (35, 42, 50, 58, 65)        # espeak's 0-100 scale (default 50 in the middle)
EXTRA_FEATURES = {'thinking': datasets.Value('string'), 'holdout': datasets.Value('string'),
                  'tts_voice': datasets.Value('string'), 'tts_rate': datasets.Value('int64'),
                  'tts_pitch': datasets.Value('int64')}


@dataclasses.dataclass(frozen=True)
class Voicing:
    """How one item is spoken: an espeak-ng voice, a rate (words per minute) and a pitch (0-100)."""
    voice: str
    rate: int
    pitch: int

    def tts(self) -> EspeakTTS:
        """The espeak-ng backend speaking this way."""
        return EspeakTTS(voice=self.voice, rate=self.rate, pitch=self.pitch)


def speech_plan(world: World, *, voices: Sequence[str] = TRAIN_VOICES, held_out_voice: str = HELD_OUT_VOICE,
                held_out_splits: Sequence[str] = HELD_OUT_SPLITS, rates: Sequence[int] = RATES,
                pitches: Sequence[int] = PITCHES) -> Dict[str, Voicing]:
    """key -> Voicing for every item of world: a seeded choice per key (the world's seed), the voice from
    voices, or held_out_voice in held_out_splits. held_out_voice must not be one of voices."""
    if held_out_voice in voices:
        raise ValueError(f"speech_plan: the held-out voice {held_out_voice!r} is also a training voice")
    plan = {}
    for item in world.items():
        rng = random.Random(f"{world.config.seed}:voice:{item.key}")
        voice = held_out_voice if item.split in held_out_splits else rng.choice(list(voices))
        plan[item.key] = Voicing(voice, rng.choice(list(rates)), rng.choice(list(pitches)))
    return plan


def item_row(item: Item) -> Dict[str, Any]:
    """The schema row of an item, without audio."""
    return {'key': item.key, 'question': item.question, 'options': list(item.options),
            'answer_index': item.answer_index, 'prompt_for_tts': item.prompt_for_tts, 'source': SOURCE,
            'subject': item.template, 'question_for_tts': item.question, 'thinking': item.thinking,
            'holdout': '|'.join(item.holdout)}


def clip_path(wav_dir: PathLike, key: str, text: str, voicing: Voicing) -> Path:
    """The cached clip of key spoken as voicing: <key>-<10 hex digits of SHA-1 of text and voicing>.wav."""
    digest = hashlib.sha1(repr((text, voicing.voice, voicing.rate, voicing.pitch)).encode()).hexdigest()[:10]
    return Path(wav_dir) / f"{wav_name(key)[:-len('.wav')]}-{digest}.wav"


def speak_items(items: Sequence[Item], plan: Mapping[str, Voicing], wav_dir: PathLike) -> Tuple[Dict[str, Path],
                                                                                              Dict[str, Any]]:
    """Make (or reuse) the clip of every item; return key -> clip path and counts (made, reused, seconds).

    Clips are written atomically, so a cached clip is whole; espeak-ng failing on a voice stops the build
    (TTSUnavailable) before anything is spoken in it."""
    wav_dir = Path(wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    backends: Dict[Voicing, EspeakTTS] = {}
    paths, made, reused, seconds = {}, 0, 0, 0.0
    for item in tqdm(items, desc='miniature speech', unit='clip', mininterval=2):
        voicing = plan[item.key]
        path = clip_path(wav_dir, item.key, item.prompt_for_tts, voicing)
        if path.is_file():
            reused += 1
            seconds += len(load_audio(str(path))) / SAMPLING_RATE
        else:
            if voicing not in backends:
                backends[voicing] = voicing.tts()
                ensure_available(backends[voicing])
            audio = backends[voicing].synthesize(item.prompt_for_tts)
            write_wav_atomic(path, audio)
            made += 1
            seconds += len(audio) / SAMPLING_RATE
        paths[item.key] = path
    return paths, {'clips_made': made, 'clips_reused': reused, 'audio_seconds': round(seconds, 2)}


def build_world_dataset(out_dir: PathLike, config: Optional[WorldConfig] = None, *, speech: bool = True,
                        overwrite: bool = False, max_items: Optional[int] = None) -> datasets.DatasetDict:
    """Generate the world of config, speak it (unless speech=False: a text-only set without the audio column)
    and save DIR/hf (train, validation, test) and DIR/report.json; return the saved DatasetDict.

    max_items: keep only the first max_items items of each split (a preview or a test; recorded as row_limit).
    """
    t0 = time.perf_counter()
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    check_output_free(out_dir, overwrite)
    world = generate_world(config)
    chosen = {s: world.splits[s][:max_items] if max_items is not None else world.splits[s] for s in SPLITS}
    report = new_report('miniature', {'generator': 'scripts.miniature.world',
                                      'config': dataclasses.asdict(config)})
    report['output_split'] = list(SPLITS)
    if max_items is not None:
        if max_items < 1:
            raise ValueError(f"max_items={max_items} must be >= 1 (or None for every item)")
        report['row_limit'] = int(max_items)
    report['rows_read'] = report['rows_kept'] = sum(len(v) for v in chosen.values())
    report['splits'] = {s: len(chosen[s]) for s in SPLITS}
    report['templates'] = {s: dict(sorted(Counter(i.template for i in chosen[s]).items())) for s in SPLITS}
    everything = [i for s in SPLITS for i in chosen[s]]
    paths: Dict[str, Path] = {}
    plan: Dict[str, Voicing] = {}
    if speech:
        plan = speech_plan(world)
        report['voices'] = {s: dict(sorted(Counter(plan[i.key].voice for i in chosen[s]).items())) for s in SPLITS}
        paths, counts = speak_items(everything, plan, out_dir / 'wav')
        report.update(counts)
    out_dir.mkdir(parents=True, exist_ok=True)
    dsd = {}
    for split in SPLITS:
        rows: List[Dict[str, Any]] = []
        for item in chosen[split]:
            row = item_row(item)
            if speech:
                v = plan[item.key]
                row.update(audio=str(paths[item.key]), tts_voice=v.voice, tts_rate=v.rate, tts_pitch=v.pitch)
            rows.append(row)
        features = EXTRA_FEATURES if speech else {k: EXTRA_FEATURES[k] for k in ('thinking', 'holdout')}
        ds = rows_to_dataset(rows, extra_features=features)
        # every clip was written by this module through atomic writes, so decoding them all again is skipped
        dsd[split] = validate_dataset(ds, f"miniature[{split}]", require_audio=speech, check_audio=False)
    save_dataset_dict(datasets.DatasetDict(dsd), out_dir / 'hf')
    report['seconds_spent'] = round(time.perf_counter() - t0, 2)
    write_report(out_dir, report)
    return datasets.load_from_disk(str(out_dir / 'hf'))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: build the miniature world's hf_format dataset."""
    defaults = WorldConfig()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, help='output folder (DIR/hf, DIR/report.json, DIR/wav)')
    for name in ('seed', 'n_train', 'n_validation', 'n_test', 'n_towns'):
        p.add_argument(f'--{name}', type=int, default=getattr(defaults, name))
    p.add_argument('--arithmetic_holdout', choices=('numbers_object', 'numbers'),
                   default=defaults.arithmetic_holdout)
    p.add_argument('--no_speech', action='store_true', help='text only: no audio column')
    p.add_argument('--max_items', type=int, default=None, help='only the first N items of each split')
    p.add_argument('--overwrite', action='store_true', help='replace an existing DIR/hf')
    a = p.parse_args(argv)
    config = WorldConfig(seed=a.seed, n_train=a.n_train, n_validation=a.n_validation, n_test=a.n_test,
                         n_towns=a.n_towns, arithmetic_holdout=a.arithmetic_holdout)
    try:
        build_world_dataset(a.out, config, speech=not a.no_speech, overwrite=a.overwrite, max_items=a.max_items)
    except FileExistsError as e:   # one line, not a traceback
        raise SystemExit(f"scripts.miniature.build: {e}") from None
    print(summary_text(json.loads((Path(a.out) / 'report.json').read_text())))


if __name__ == '__main__':
    main()
