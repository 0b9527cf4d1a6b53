"""Preference data for the DPO and SFT baselines (docs/original.md §4.3), in ms-swift's preference format.

Two steps, each resumable and never overwriting earlier results:

``generate``: chain-of-thought answers of one model in one input mode (``trainer.modes``: ``audio`` = the
speech prompt, ``text`` = the text prompt, ``text_base`` = the text prompt with the adapter off), judged by
the project's answer extraction (rule-based, or xFinder), sampled until a question has a correct and a
wrong answer or ``max_samples`` answers were drawn. One JSON line per finished question in
``<out>/<mode>/samples[.shardIofN].jsonl``; a rerun skips the keys already written. The original drew one
answer per call at temperature U(0.9, 1.1) up to 100 times; here every undecided question gets
``samples_per_round`` answers per round, batched over questions (one temperature drawn per round),
which is the same distribution of answers at a fraction of the calls.

``build``: the preference set. Chosen = a correct text-conditioned answer (the teacher), rejected = a
wrong speech-conditioned answer (the student), joined with the base dataset on its ``key`` column (the
original joined on an ``id_string`` column its own builders never write, docs/original.md §4.3 [!]). It writes
``dpo.jsonl`` (``messages`` ending with the chosen answer, ``rejected_response``, ``audios``),
``sft.jsonl`` (the chosen answer only), a 200-row validation split of each (the original's eval split,
shuffled with seed 42) and ``report.json`` (rows kept and dropped, with reasons).

The end-of-turn token: answers are stored as plain text (any end-of-turn string an engine leaves in is
stripped); ms-swift's template appends the model's end-of-turn token after the assistant turn when it
encodes a training row, so DPO and SFT targets do teach it (the original's targets lacked ``<|end|>``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import datasets
from tqdm import tqdm

from trainer import jsonl, prompts
from trainer.answer import gold_letter
from trainer.data import write_clip, write_jsonl
from trainer.engine import add_engine_arguments, build_engine, generate as engine_generate, resolve_model
from trainer.extract import get_extractor
from trainer.modes import build_request, uses_adapter
from trainer.schema import DEFAULT_MAX_AUDIO_SECONDS, SchemaError, load_hf_dataset, validate_dataset

# Strings an engine may leave at the end of a completion; ms-swift's template adds the real one back.
END_OF_TURN_STRINGS = ('<|im_end|>', '<|endoftext|>', '<|end|>', '<|eot_id|>')
GENERATION_MODES = ('audio', 'text', 'text_base')
TEMPERATURE_RANGE = (0.9, 1.1)  # docs/original.md §4.3


def strip_end_of_turn(text: str) -> str:
    """``text`` without trailing whitespace and end-of-turn strings."""
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for end in END_OF_TURN_STRINGS:
            if text.endswith(end):
                text, changed = text[:-len(end)].rstrip(), True
    return text


@dataclass
class QuestionState:
    """The answers drawn so far for one question (docs/original.md §4.3's sampling loop)."""
    key: str
    answer: str                  # the gold option's text
    answer_index: int
    question_text: str
    chosen: Optional[str] = None     # first correct answer
    rejected: Optional[str] = None   # first wrong answer
    n_samples: int = 0
    n_correct: int = 0
    first_correct: Optional[bool] = None
    extracted: List[Optional[str]] = field(default_factory=list)

    def add(self, completion: str, correct: bool, extracted: Optional[str]) -> None:
        """Count one judged answer; the first correct and the first wrong one are kept."""
        self.n_samples += 1
        self.n_correct += int(correct)
        self.extracted.append(extracted)
        if self.first_correct is None:
            self.first_correct = correct
        if correct and self.chosen is None:
            self.chosen = completion
        if not correct and self.rejected is None:
            self.rejected = completion

    @property
    def decided(self) -> bool:
        """Both a correct and a wrong answer were drawn."""
        return self.chosen is not None and self.rejected is not None

    def gen_times(self) -> int:
        """The original's signed count: -n when the first answer was right ("easy"), +n when it was
        wrong ("hard"), 0 when every answer agreed."""
        if not self.decided:
            return 0
        return -self.n_samples if self.first_correct else self.n_samples

    def record(self, mode: str) -> Dict:
        """The JSON line written for this question (its fields, the mode and the signed gen_times)."""
        out = asdict(self)
        out.pop('first_correct')
        return dict(out, mode=mode, gen_times=self.gen_times())


def shard_file(out_dir: Path, mode: str, shard_index: int, num_shards: int) -> Path:
    """``<out>/<mode>/samples.jsonl``, or ``samples.shard<i>of<K>.jsonl`` when sharded."""
    name = 'samples.jsonl' if num_shards == 1 else f'samples.shard{shard_index}of{num_shards}.jsonl'
    return out_dir / mode / name


def read_records(paths: Iterable[Path]) -> List[Dict]:
    """Every JSON line of ``paths`` (a torn last line of a killed run is skipped; a bad line elsewhere
    raises naming the file and line)."""
    return [record for path in paths for record in jsonl.read(path, missing_ok=False)]


def mode_files(out_dir: Path, mode: str) -> List[Path]:
    """Every samples file (all shards) of one mode, in name order."""
    return sorted((Path(out_dir) / mode).glob('samples*.jsonl'))


def generate(model: str, dataset: str, out_dir: Path, *, mode: str = 'text', base_model: Optional[str] = None,
             model_type: str = 'qwen2_5_omni', split: str = 'train', prompt_type: str = 'systhink',
             max_samples: int = 100, samples_per_round: int = 4, max_new_tokens: int = 1000,
             max_rows: Optional[int] = None, batch_questions: int = 16, batch_size: int = 16,
             backend: str = 'auto', extractor: str = 'rule', xfinder_model: Optional[str] = None, seed: int = 42,
             shard_index: int = 0, num_shards: int = 1) -> Path:
    """Sample answers in ``mode`` for the rows of this shard not yet written; return the shard's file.

    ``batch_questions`` questions are sampled together (written when all are finished); the engine runs
    ``batch_size`` sequences at a time (on the CPU the prompt logits of a speech prompt are large)."""
    if mode not in GENERATION_MODES:
        raise ValueError(f'mode must be one of {GENERATION_MODES}, got {mode!r}')
    if not 0 <= shard_index < num_shards:
        raise ValueError(f'shard_index {shard_index} is not in [0, {num_shards})')
    if max_samples < 2 or samples_per_round < 1:
        raise ValueError('max_samples must be >= 2 and samples_per_round >= 1')
    out_dir = Path(out_dir)
    spec = resolve_model(model, base_model, model_type)
    config = {'model': model, 'base': spec.base, 'adapter': spec.adapter, 'dataset': dataset, 'split': split,
              'prompt_type': prompt_type, 'max_samples': max_samples, 'samples_per_round': samples_per_round,
              'max_new_tokens': max_new_tokens, 'max_rows': max_rows, 'extractor': extractor, 'seed': seed,
              'num_shards': num_shards}
    if extractor == 'xfinder':  # the judge is part of the settings (rule-based runs keep their old config)
        config['xfinder_model'] = xfinder_model
    # samples made with other settings are never mixed in one file (RunConfigError, a RuntimeError)
    jsonl.guard_run_config(out_dir / mode, config, 'samples')

    ds = load_hf_dataset(dataset, split)
    # the original shuffled with seed 42 before sharding by rank (docs/original.md §4.3)
    ds = ds.shuffle(seed=seed)
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    validate_dataset(ds, dataset, require_audio=mode == 'audio', check_audio=False)
    mine = [i for i in range(len(ds)) if i % num_shards == shard_index]
    path = shard_file(out_dir, mode, shard_index, num_shards)
    done = {r['key'] for r in read_records(mode_files(out_dir, mode))}
    todo = [i for i in mine if ds[i]['key'] not in done]

    engine = build_engine(spec, backend, batch_size=batch_size)
    judge = get_extractor(extractor, xfinder_model, backend, batch_size)
    audio_dir = out_dir / 'audio'
    rng = random.Random(f'{seed}-{shard_index}-{mode}')
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f'preference {mode}', unit='question')
    for start in range(0, len(todo), batch_questions):
        rows = [ds[i] for i in todo[start:start + batch_questions]]
        pending, requests, finished = [], {}, []
        for row in rows:
            try:
                audio = write_clip(row, dataset, audio_dir) if mode == 'audio' else None
                requests[row['key']] = build_request(mode, prompt_type, row['prompt_for_tts'], audio)
                pending.append((row, QuestionState(row['key'], row['options'][row['answer_index']],
                                                   int(row['answer_index']), row['prompt_for_tts'])))
            except SchemaError as err:  # an unreadable clip: reported, the other questions go on
                finished.append({'key': row['key'], 'mode': mode, 'error': str(err), 'chosen': None,
                                 'rejected': None, 'n_samples': 0})
        while pending:
            batch = []
            for row, state in pending:
                batch += [(row, state)] * min(samples_per_round, max_samples - state.n_samples)
            temperature = rng.uniform(*TEMPERATURE_RANGE)
            round_seed = rng.randrange(2 ** 31)
            _seed_local_sampling(round_seed)
            outputs = engine_generate(engine, [requests[row['key']] for row, _ in batch], spec, uses_adapter(mode),
                                      max_new_tokens, temperature=temperature, seed=round_seed)
            outputs = [strip_end_of_turn(o) for o in outputs]
            letters = judge([row['question'] for row, _ in batch], outputs, [row['options'] for row, _ in batch],
                            [state.answer_index for _, state in batch])
            for (row, state), output, letter in zip(batch, outputs, letters, strict=True):
                if not state.decided:
                    state.add(output, letter == gold_letter(state.answer_index), letter)
            still = []
            for row, state in pending:
                if state.decided or state.n_samples >= max_samples:
                    finished.append(state.record(mode))
                else:
                    still.append((row, state))
            pending = still
        jsonl.append(path, finished)  # one write per batch; a torn last line of a killed run is cut first
        bar.update(len(rows))
    bar.close()
    return path


def _seed_local_sampling(seed: int) -> None:
    """ms-swift's transformers engine samples from torch's global generator: seed it per round."""
    import torch  # deferred: torch loads with the engine; build and from_columns never need it
    torch.manual_seed(seed)


def _first_by_key(records: Sequence[Dict], field_name: str, source: str, report: Dict) -> Dict[str, str]:
    """key -> the record's ``field_name`` for records where it is set; duplicates keep the first."""
    out: Dict[str, str] = {}
    for r in records:
        if 'key' not in r:
            raise ValueError(f'{source}: a record without "key": {str(r)[:120]}')
        if r.get(field_name) is None:
            continue
        if r['key'] in out:
            report['duplicate_keys'][source] = report['duplicate_keys'].get(source, 0) + 1
            continue
        out[r['key']] = strip_end_of_turn(r[field_name])
    return out


def preference_rows(ds: datasets.Dataset, chosen: Dict[str, str], rejected: Dict[str, str], prompt_type: str,
                    prompt_modality: str, audio_paths: Dict[str, str]) -> List[Dict]:
    """ms-swift DPO rows (``messages`` with the chosen answer last, ``rejected_response``, ``audios``)."""
    rows = []
    for row in ds:
        key = row['key']
        if key not in chosen or key not in rejected:
            continue
        modality = 'speech' if prompt_modality == 'a' else 'text'
        messages = prompts.build_messages(prompt_type, modality, row['prompt_for_tts'], answer=chosen[key])
        rows.append({'messages': messages, 'rejected_response': rejected[key],
                     'audios': [audio_paths[key]] if modality == 'speech' else [], 'tars_key': key})
    return rows


def sft_rows(dpo_rows: Sequence[Dict]) -> List[Dict]:
    """The SFT set: the prompt and the chosen answer (the original's ``--loss_type sft``)."""
    return [{'messages': r['messages'], 'audios': r['audios'], 'tars_key': r['tars_key']} for r in dpo_rows]


def write_preference_set(rows: List[Dict], out_dir: Path, report: Dict, val_rows: int, seed: int) -> Dict[str, Path]:
    """Shuffle (seed 42 in the original), hold out ``val_rows`` rows, write the DPO and SFT files."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_val = min(val_rows, max(len(rows) - 1, 0))
    val, train = rows[:n_val], rows[n_val:]
    paths = {'dpo': out_dir / 'dpo.jsonl', 'dpo_val': out_dir / 'dpo_val.jsonl',
             'sft': out_dir / 'sft.jsonl', 'sft_val': out_dir / 'sft_val.jsonl'}
    write_jsonl(train, paths['dpo'])
    write_jsonl(val, paths['dpo_val'])
    write_jsonl(sft_rows(train), paths['sft'])
    write_jsonl(sft_rows(val), paths['sft_val'])
    report.update(train_rows=len(train), val_rows=len(val))
    jsonl.write_json_atomic(out_dir / 'report.json', report)
    return paths


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if (out_dir / 'dpo.jsonl').exists() and not overwrite:
        raise FileExistsError(f'{out_dir} already holds a preference set; choose another --out or pass --overwrite')
    out_dir.mkdir(parents=True, exist_ok=True)


def build(dataset: str, samples_dir: Path, out_dir: Path, *, chosen_mode: str = 'text', rejected_mode: str = 'audio',
          split: str = 'train', prompt_type: str = 'systhink', prompt_modality: str = 'a', val_rows: int = 200,
          seed: int = 42, overwrite: bool = False, max_audio_seconds: Optional[float] = DEFAULT_MAX_AUDIO_SECONDS,
          drop_long_audio: bool = False) -> Dict[str, Path]:
    """Join the ``generate`` outputs of two modes with the base dataset on ``key`` (docs/original.md §4.3 build_ds).

    With speech prompts every clip is decoded first: a corrupt one, or one longer than ``max_audio_seconds``,
    stops the build naming its key (``drop_long_audio``: over-long clips are left out)."""
    out_dir, samples_dir = Path(out_dir), Path(samples_dir)
    _prepare_out(out_dir, overwrite)
    chosen_files, rejected_files = mode_files(samples_dir, chosen_mode), mode_files(samples_dir, rejected_mode)
    for mode, files in ((chosen_mode, chosen_files), (rejected_mode, rejected_files)):
        if not files:
            raise FileNotFoundError(f'no samples for mode {mode!r} under {samples_dir / mode} (run `generate` first)')
    report = {'dataset': dataset, 'split': split, 'chosen_mode': chosen_mode, 'rejected_mode': rejected_mode,
              'prompt_type': prompt_type, 'prompt_modality': prompt_modality, 'duplicate_keys': {}}
    chosen = _first_by_key(read_records(chosen_files), 'chosen', f'{chosen_mode} samples', report)
    rejected = _first_by_key(read_records(rejected_files), 'rejected', f'{rejected_mode} samples', report)
    ds = load_hf_dataset(dataset, split)
    need_audio = prompt_modality == 'a'
    ds = validate_dataset(ds, dataset, require_audio=need_audio, check_audio=need_audio,
                          max_audio_seconds=max_audio_seconds, drop_long_audio=drop_long_audio)
    keys = set(ds['key'])
    report.update(base_rows=len(ds), with_chosen=len(chosen), with_rejected=len(rejected),
                  unknown_keys=sorted((set(chosen) | set(rejected)) - keys)[:20],
                  n_unknown_keys=len((set(chosen) | set(rejected)) - keys))
    return _join_and_write(ds, dataset, chosen, rejected, report, out_dir, prompt_type=prompt_type,
                           prompt_modality=prompt_modality, val_rows=val_rows, seed=seed)


def _join_and_write(ds: datasets.Dataset, dataset: str, chosen: Dict[str, str], rejected: Dict[str, str],
                    report: Dict, out_dir: Path, *, prompt_type: str, prompt_modality: str, val_rows: int,
                    seed: int) -> Dict[str, Path]:
    """The base rows with both a chosen and a rejected answer, their clips written once, as the DPO/SFT files."""
    keep = ds.select([i for i, k in enumerate(ds['key']) if k in chosen and k in rejected])
    report['joined'] = len(keep)
    audio_paths = {}
    if prompt_modality == 'a':
        audio_paths = {row['key']: write_clip(row, dataset, out_dir / 'audio')
                       for row in tqdm(keep, desc='audio', disable=len(keep) < 50)}
    rows = preference_rows(keep.remove_columns([c for c in ('audio', ) if c in keep.column_names]),
                           chosen, rejected, prompt_type, prompt_modality, audio_paths)
    return write_preference_set(rows, out_dir, report, val_rows, seed)


def resolve_columns(columns: Sequence[str], chosen_type: str = 'am2', rejected_type: str = 'am2') -> Tuple[str, str]:
    """The original's column selection (docs/original.md §4.1): ``chosen_<type>`` replaces ``chosen`` when it exists;
    ``rejected_<type>`` replaces ``rejected`` when it exists and the type is not ``am2``."""
    chosen = f'chosen_{chosen_type}' if f'chosen_{chosen_type}' in columns else 'chosen'
    rejected = 'rejected'
    if rejected_type != 'am2' and f'rejected_{rejected_type}' in columns:
        rejected = f'rejected_{rejected_type}'
    return chosen, rejected


def from_columns(dataset: str, out_dir: Path, *, chosen_type: str = 'am2', rejected_type: str = 'am2',
                 split: str = 'train', prompt_type: str = 'systhink', prompt_modality: str = 'a',
                 val_rows: int = 200, seed: int = 42, overwrite: bool = False,
                 max_audio_seconds: Optional[float] = DEFAULT_MAX_AUDIO_SECONDS,
                 drop_long_audio: bool = False) -> Dict[str, Path]:
    """A published preference set (hf_format plus answer columns, e.g. the original's
    ``..._dpo_hf_format.catm2ram2.v1``) to the same files; columns picked as the original did. Clips are
    checked as in ``build``."""
    out_dir = Path(out_dir)
    _prepare_out(out_dir, overwrite)
    ds = load_hf_dataset(dataset, split)
    chosen_column, rejected_column = resolve_columns(ds.column_names, chosen_type, rejected_type)
    for column in (chosen_column, rejected_column):
        if column not in ds.column_names:
            raise SchemaError(f'{dataset}: no column {column!r} (columns: {ds.column_names})')
    need_audio = prompt_modality == 'a'
    ds = validate_dataset(ds, dataset, require_audio=need_audio, check_audio=need_audio,
                          max_audio_seconds=max_audio_seconds, drop_long_audio=drop_long_audio)
    report = {'dataset': dataset, 'split': split, 'chosen_column': chosen_column, 'rejected_column': rejected_column,
              'prompt_type': prompt_type, 'prompt_modality': prompt_modality, 'duplicate_keys': {}}
    records = [{'key': k, 'chosen': c, 'rejected': r}
               for k, c, r in zip(ds['key'], ds[chosen_column], ds[rejected_column], strict=True)]
    chosen = _first_by_key(records, 'chosen', chosen_column, report)
    rejected = _first_by_key(records, 'rejected', rejected_column, report)
    report['base_rows'] = len(ds)
    return _join_and_write(ds, dataset, chosen, rejected, report, out_dir, prompt_type=prompt_type,
                           prompt_modality=prompt_modality, val_rows=val_rows, seed=seed)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    g = sub.add_parser('generate', help='sample judged answers of one model in one mode (resumable)')
    # --model, --base_model, --model_type, --backend, --max_new_tokens, --batch_size
    add_engine_arguments(g, max_new_tokens=1000, batch_size=16, model_type='qwen2_5_omni')
    g.add_argument('--dataset', required=True)
    g.add_argument('--split', default='train')
    g.add_argument('--out', required=True, type=Path)
    g.add_argument('--mode', default='text', choices=GENERATION_MODES)
    g.add_argument('--prompt_type', default='systhink', choices=prompts.PROMPT_TYPES)
    g.add_argument('--max_samples', type=int, default=100)
    g.add_argument('--samples_per_round', type=int, default=4)
    g.add_argument('--max_rows', type=int, default=None)
    g.add_argument('--batch_questions', type=int, default=16, help='questions sampled together')
    g.add_argument('--extractor', default='rule', choices=['rule', 'xfinder'])
    g.add_argument('--xfinder_model', default=None,
                   help='the xFinder checkpoint of --extractor xfinder (default IAAR-Shanghai/xFinder-qwen1505)')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--shard_index', type=int, default=_env_int('RANK', 0))
    g.add_argument('--num_shards', type=int, default=_env_int('WORLD_SIZE', 1))
    for name in ('build', 'from_columns'):
        b = sub.add_parser(name)
        b.add_argument('--dataset', required=True)
        b.add_argument('--split', default='train')
        b.add_argument('--out', required=True, type=Path)
        b.add_argument('--prompt_type', default='systhink', choices=prompts.PROMPT_TYPES)
        b.add_argument('--prompt_modality', default='a', choices=['a', 't'])
        b.add_argument('--val_rows', type=int, default=200)
        b.add_argument('--seed', type=int, default=42)
        b.add_argument('--overwrite', action='store_true')
        b.add_argument('--max_audio_seconds', type=float, default=DEFAULT_MAX_AUDIO_SECONDS,
                       help='longest clip accepted (0: no limit); longer ones stop the build naming their keys')
        b.add_argument('--drop_long_audio', action='store_true', help='leave clips over the limit out instead')
    sub.choices['build'].add_argument('--samples', required=True, type=Path, help='the generate --out directory')
    sub.choices['build'].add_argument('--chosen_mode', default='text', choices=GENERATION_MODES)
    sub.choices['build'].add_argument('--rejected_mode', default='audio', choices=GENERATION_MODES)
    sub.choices['from_columns'].add_argument('--chosen_type', default='am2', help='use column chosen_<type> if present')
    sub.choices['from_columns'].add_argument('--rejected_type', default='am2',
                                             help='use column rejected_<type> if present (not for am2)')
    a = p.parse_args(argv)
    if a.command == 'generate':
        print(generate(a.model, a.dataset, a.out, mode=a.mode, base_model=a.base_model, model_type=a.model_type,
                       split=a.split, prompt_type=a.prompt_type, max_samples=a.max_samples,
                       samples_per_round=a.samples_per_round, max_new_tokens=a.max_new_tokens, max_rows=a.max_rows,
                       batch_questions=a.batch_questions, batch_size=a.batch_size, backend=a.backend,
                       extractor=a.extractor, xfinder_model=a.xfinder_model, seed=a.seed, shard_index=a.shard_index,
                       num_shards=a.num_shards))
        return
    common = dict(split=a.split, prompt_type=a.prompt_type, prompt_modality=a.prompt_modality, val_rows=a.val_rows,
                  seed=a.seed, overwrite=a.overwrite, max_audio_seconds=a.max_audio_seconds,
                  drop_long_audio=a.drop_long_audio)
    if a.command == 'build':
        paths = build(a.dataset, a.samples, a.out, chosen_mode=a.chosen_mode, rejected_mode=a.rejected_mode, **common)
    else:
        paths = from_columns(a.dataset, a.out, chosen_type=a.chosen_type, rejected_type=a.rejected_type, **common)
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == '__main__':
    main()
