"""The miniature's driver (docs/miniature.md): every stage, the hearing probe, the ablation arms, the layer analysis and
the report, in one run.

    python -m scripts.miniature.pipeline [--quick] [--seeds 0,1,2,3,4,5] [--arms sft,dpo,...] [--steps N]
        [--jobs N] [--cache_dir D] [--report_dir docs/miniature] [--report_md docs/miniature.md]

Jobs, in order (a progress bar with an ETA over them):

1. stage 1 and stage 2 (``scripts.miniature.stages.run``: trained once, cached, evaluated with eval.qa);
2. the hearing probe of the stage-2 checkpoint, the start of stage 3 (``scripts.miniature.hearing.probe`` on the
   first ``eval_items`` test items; cached per checkpoint);
3. every arm x seed, seed by seed (``scripts.miniature.arms.run_arm``: cached per arm, seed, setting and steps, so
   a killed run resumes at the first job without its ``metrics.json``); every arm runs the same seeds (common
   random numbers). ``--jobs`` runs go at once in worker processes (``default_jobs``: 2 on a CPU machine),
   after the data and the start's curve point they share are built;
4. the layer-similarity analysis (``scripts.layer_similarity_analysis.measure``: token and pooled measures, the
   model's own greedy text responses teacher-forced after the text and the speech prompt) of the stage-2
   checkpoint and of seed 0 of the ``grpo`` and ``tars`` arms (when they and seed 0 are run), on the first test
   items (cached per checkpoint);
5. the report (``scripts.miniature.report.write_report``): ``results.json`` and the figures in ``--report_dir``,
   the generated region of ``--report_md``.

Every path the results hold is relative to the miniature cache root ``<cache>/miniature/``, and the command names
the cache folder ``$TARS_CACHE``: no report names the folders of the machine that made it. Wall seconds per stage:
a job run now is timed; a job found in the cache reports the training time stored when it was made (plus this
call's evaluation) and is marked cached in the report. Only the FULL setting writes ``docs/`` by default;
``--quick`` writes its report under ``<cache>/miniature/report-quick/``.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from scripts.miniature import report, stages

REPO = Path(__file__).resolve().parents[2]
LAYER_SAMPLES = {'full': 64, 'quick': 4}   # test items of the layer analysis
LAYER_RUNS = (('stage 2', None), ('GRPO', 'grpo'), ('TARS', 'tars'))   # (label, arm of seed 0; None: stage 2)
FULL_SEEDS = (0, 1, 2, 3, 4, 5)   # the paired intervals' half-width goal needs at least 5 (docs/miniature.md)
# one: --quick runs every stage and arm within 5 minutes (the tests exercise the paired intervals on fake runs)
QUICK_SEEDS = (0,)


def _join(seeds: Sequence[int]) -> str:
    return ','.join(map(str, seeds))


def parse_list(text: str, kind: type = str) -> List:
    """'0,1,2' -> [0, 1, 2] (``kind`` applied to each non-empty item)."""
    return [kind(x.strip()) for x in text.split(',') if x.strip()]


def command_line(launcher: str, argv: Sequence[str]) -> str:
    """The exact command as the report names it: ``launcher`` and the flags of ``argv`` but ``--launcher``'s."""
    own = [x for i, x in enumerate(argv) if x != '--launcher' and not x.startswith('--launcher=')
           and (i == 0 or argv[i - 1] != '--launcher')]
    return shlex.join([*shlex.split(launcher), *own])


def git_commit(repo: Path = REPO) -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it ('unknown' outside git)."""
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return head + ('-dirty' if dirty else '')


def relative_path(path: str, root: Path) -> str:
    """``path`` relative to the miniature cache root ``root`` (as given when already relative); a folder outside
    the root is named by its last component only (the report never names the machine's folders)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        try:
            return p.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return p.name


def portable_command(command: str, cache_dir: Optional[Path], repo: Path = REPO) -> str:
    """``command`` with the cache folder named ``$TARS_CACHE`` and the repository's own folder dropped (paths
    under it become relative), so that the report holds no absolute path."""
    given = Path(cache_dir or stages.default_cache_dir())
    # absolute spellings only (a relative one is portable already, and could match inside a flag's name)
    for spelling in sorted({str(given.resolve()), str(given)} - {'/'}, key=len, reverse=True):
        if Path(spelling).is_absolute():
            command = command.replace(spelling.rstrip('/'), '$TARS_CACHE')
    return command.replace(str(repo).rstrip('/') + '/', '').replace(str(repo), '.')


def read_metrics(run_dir: Path, arm: str, seed: int) -> Dict:
    """An arm run's ``metrics.json`` (scripts.miniature.arms.run_arm), checked for the fields the report needs; a
    missing file or field is named with the file, arm and seed."""
    path = Path(run_dir) / 'metrics.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path}: arm {arm} seed {seed} wrote no metrics.json')
    try:
        metrics = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f'{path}: arm {arm} seed {seed}: not JSON ({err})') from err
    for field in ('speech_acc', 'text_acc', 'checkpoint'):
        if field not in metrics:
            raise ValueError(f'{path}: arm {arm} seed {seed}: field {field!r} missing')
    return metrics


def arm_entry(metrics: Dict, seed: int, root: Path, cached: bool) -> Dict:
    """The results row of one arm x seed (report module docstring) from its ``metrics.json``: the accuracies and
    hearing, the validation curve (``val_curve``), the all-wrong groups' advantages, the wall times, and the
    checkpoint relative to ``root``."""
    return {'seed': seed, 'speech_acc': metrics['speech_acc'], 'text_acc': metrics['text_acc'],
            'hearing_acc': metrics.get('hearing_acc'), 'curve': metrics.get('val_curve') or [],
            'allwrong': metrics.get('allwrong'), 'steps': metrics.get('steps'),
            **{k: metrics.get(k) for k in report.RUN_WALL_FIELDS}, 'cached': cached,
            'checkpoint': relative_path(metrics['checkpoint'], root)}


def stage_entry(stage: str, summary: Dict, root: Path, cached: bool) -> Dict:
    """The results entry of a stage from ``stages.run``'s summary (checkpoint relative to ``root``); stage 2 also
    has its speech accuracy."""
    acc = summary.get('accuracy', {})
    entry = {'text_acc': acc.get('text'), 'checkpoint': relative_path(summary['checkpoint'], root),
             'train_wall_seconds': summary.get('train_wall_seconds'),
             'eval_wall_seconds': summary.get('eval_wall_seconds'), 'cached': cached,
             'final_loss': summary.get('final_loss'), 'eval_items': summary.get('eval_items')}
    if stage == 'stage2':
        entry['speech_acc'] = acc.get('audio')
    if summary.get('phases'):
        entry['phases'] = [dict(phase, checkpoint=relative_path(phase['checkpoint'], root))
                           for phase in summary['phases']]
    return entry


def _stage_job(stage: str, setting: stages.Setting, cache_dir: Optional[Path]) -> Tuple[Dict, float, bool]:
    """Run (or find) one stage; (summary, wall seconds, cached). Cached: its checkpoint's ``warm_start.json``
    was written before this call; its wall time is then the stored training time plus this call's evaluation."""
    t0, wall_t0 = time.perf_counter(), time.time()
    summary = stages.run(stage, setting, cache_dir)
    wall = time.perf_counter() - t0
    cached = (Path(summary['checkpoint']) / 'warm_start.json').stat().st_mtime < wall_t0
    if cached:
        wall = (summary.get('train_wall_seconds') or 0.0) + (summary.get('eval_wall_seconds') or 0.0)
    return summary, wall, cached


def _hearing_job(checkpoint: Path, setting: stages.Setting,
                 cache_dir: Optional[Path]) -> Tuple[Dict, Optional[float], bool]:
    """The hearing probe of ``checkpoint`` on the first ``eval_items`` test items (cached per checkpoint by the
    probe itself); (its result, wall seconds, cached). Cached: every answer was made by an earlier call. The
    seconds are those the probe stores with its answers, over all its calls (None for answers made before it
    stored them)."""
    from scripts.miniature import hearing
    result = hearing.probe(checkpoint, setting, cache_dir, split='test', max_items=setting.eval_items)
    return result, result.get('wall_seconds'), not result.get('generated')


def _arm_job(arm: str, seed: int, setting: stages.Setting, steps: Optional[int],
             cache_dir: Optional[Path]) -> Tuple[Dict, float, bool]:
    """Run (or find) one arm x seed; (metrics.json's data, wall seconds, cached)."""
    from scripts.miniature.arms import run_arm
    t0, wall_t0 = time.perf_counter(), time.time()
    run_dir = Path(run_arm(arm, seed, setting, steps=steps, cache_dir=cache_dir))
    wall = time.perf_counter() - t0
    metrics = read_metrics(run_dir, arm, seed)
    # cached: metrics.json was written before this call; its wall time is then the one stored in it
    cached = (run_dir / 'metrics.json').stat().st_mtime < wall_t0
    return metrics, ((report.run_wall(metrics) or 0.0) if cached else wall), cached


def default_jobs() -> int:
    """How many arm runs go at once: 2 on a machine with at least two cores and no GPU, else 1. The miniature's
    model is small enough that one run leaves the second core mostly idle: two one-thread runs at once give 1.15
    to 1.46 times the throughput of one two-thread run (docs/miniature.md, "What the full run costs")."""
    import torch
    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def _init_worker(threads: int) -> None:
    """A worker process of the arm runs: ``threads`` torch threads (the machine's cores shared among the jobs)."""
    os.environ['OMP_NUM_THREADS'] = str(threads)
    import torch
    torch.set_num_threads(threads)


def prepare_shared(setting: stages.Setting, arms: Sequence[str], cache_dir: Optional[Path]) -> None:
    """Build what the arm runs share, once, before they run at once: their training rows
    (``scripts.miniature.arms.arm_data``) and the start's validation-curve point (``arms.start_point``). Each is
    cached; two runs building it at the same time would write the same folder."""
    from scripts.miniature import arms as arms_module
    for arm in arms:
        arms_module.arm_data(arm, setting, cache_dir)
    arms_module.start_point(setting, cache_dir)


def _layer_job(label: str, checkpoint: str, setting: stages.Setting,
               cache_dir: Optional[Path]) -> Tuple[Dict, float, bool]:
    """The layer-similarity statistics of ``checkpoint`` on the first test items of the spoken set (cached per
    checkpoint and sample count under ``<cache>/miniature/layers/``); (stats, wall seconds, cached)."""
    from scripts.layer_similarity_analysis import measure
    samples = LAYER_SAMPLES.get(setting.name, 16)
    digest = hashlib.sha256(f'{checkpoint}|{samples}|{setting.max_new_tokens}'.encode()).hexdigest()[:12]
    out = stages._root(cache_dir) / 'layers' / f"{label.replace(' ', '_')}-{digest}"
    stats_path = out / 'layer_stats.json'
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        return stats, float(sum((stats.get('seconds') or {}).values())), True
    if out.exists():   # a killed measurement: measure never writes into an existing folder
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = stages.world_dataset(setting, True, cache_dir)
    measure.main(['--model', str(checkpoint), '--model_type', stages.MODEL_TYPE, '--dataset', str(dataset),
                  '--split', 'test', '--max_samples', str(samples), '--max_new_tokens', str(setting.max_new_tokens),
                  '--batch_size', '8', '--out_dir', str(out)])
    return json.loads(stats_path.read_text()), time.perf_counter() - t0, False


def default_report_paths(setting: stages.Setting, cache_dir: Optional[Path]) -> Tuple[Path, Path]:
    """(report_dir, report_md): docs/miniature and docs/miniature.md for FULL; a folder under the cache for any
    other setting (a toy run never overwrites docs/)."""
    if setting.name == 'full':
        return REPO / 'docs' / 'miniature', REPO / 'docs' / 'miniature.md'
    root = stages._root(cache_dir) / f'report-{setting.name}'
    return root, root / 'report.md'


def run_pipeline(setting: stages.Setting, seeds: Sequence[int], arms: Sequence[str], steps: Optional[int],
                 cache_dir: Optional[Path], report_dir: Path, report_md: Path, command: str, jobs: int = 1) -> Dict:
    """Every job (module docstring) and the report; returns the results dict given to the report. ``jobs`` > 1:
    that many arm runs at once, each in a worker process with the machine's cores divided among them; their
    results are taken in the jobs' order, so the report reads as with one."""
    started = time.perf_counter()
    root = stages._root(cache_dir)
    job_list: List[Tuple] = [('stage', 'stage1'), ('stage', 'stage2'), ('hearing',)]
    # seed by seed: a run stopped part-way leaves whole seeds of every arm, the pairs the report compares
    job_list += [('arm', arm, seed) for seed in seeds for arm in arms]
    job_list += [('layers', label, arm) for label, arm in LAYER_RUNS if arm is None or (arm in arms and 0 in seeds)]
    job_list += [('report',)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: Dict = {'command': portable_command(command, cache_dir), 'git_commit': git_commit(),
                     'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                     'setting': setting.name, 'seeds': list(seeds), 'steps': steps, 'arms': {},
                     'training_curves': {}, 'layer_similarity': {}, 'wall_seconds': {}, 'wall_cached': {},
                     'parallel': {'jobs': jobs, 'threads_per_job': threads if jobs > 1 else None}}
    wall, cached_flags = results['wall_seconds'], results['wall_cached']
    checkpoints: Dict[str, Path] = {}   # absolute, for the jobs; the results hold them relative to root
    pool: Optional[ProcessPoolExecutor] = None
    futures: Dict[Tuple[str, int], Future] = {}
    bar = tqdm(job_list, desc='miniature', unit='job', file=sys.stderr, dynamic_ncols=True)
    try:
        for job in bar:
            bar.set_postfix_str(' '.join(str(j) for j in job))
            if job[0] == 'stage':
                summary, seconds, cached = _stage_job(job[1], setting, cache_dir)
                results[job[1]] = stage_entry(job[1], summary, root, cached)
                checkpoints[job[1]] = Path(summary['checkpoint'])
                wall[job[1]], cached_flags[job[1]] = round(seconds, 1), cached
            elif job[0] == 'hearing':
                probe, seconds, cached = _hearing_job(checkpoints['stage2'], setting, cache_dir)
                results['stage2'].update(hearing_acc=probe.get('hearing_acc'), hearing_n=probe.get('n'),
                                         hearing_by_template=probe.get('by_template'))
                key = 'hearing probe (start)'
                wall[key], cached_flags[key] = None if seconds is None else round(seconds, 1), cached
            elif job[0] == 'arm':
                _, arm, seed = job
                if jobs > 1 and pool is None:   # the first arm job: every arm run goes to the workers
                    prepare_shared(setting, arms, cache_dir)
                    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn'),
                                               initializer=_init_worker, initargs=(threads,))
                    futures = {(j[1], j[2]): pool.submit(_arm_job, j[1], j[2], setting, steps, cache_dir)
                               for j in job_list if j[0] == 'arm'}
                metrics, seconds, cached = (futures[(arm, seed)].result() if pool is not None
                                            else _arm_job(arm, seed, setting, steps, cache_dir))
                results['arms'].setdefault(arm, []).append(arm_entry(metrics, seed, root, cached))
                results['training_curves'].setdefault(arm, []).append(metrics.get('curve') or [])
                if seed == 0:
                    checkpoints[arm] = root / results['arms'][arm][-1]['checkpoint']
                key = f'arm {arm}'
                wall[key] = round(wall.get(key, 0.0) + seconds, 1)
                cached_flags[key] = cached_flags.get(key, True) and cached
            elif job[0] == 'layers':
                _, label, arm = job
                stats, seconds, cached = _layer_job(label, str(checkpoints[arm or 'stage2']), setting, cache_dir)
                results['layer_similarity'][label] = dict(stats, model=relative_path(stats.get('model') or '', root))
                key = 'layer similarity'
                wall[key] = round(wall.get(key, 0.0) + seconds, 1)
                cached_flags[key] = cached_flags.get(key, True) and cached
            else:
                if steps is None:   # the arms' own step counts (their setting's default)
                    found = sorted({r.get('steps') for rows in results['arms'].values() for r in rows} - {None})
                    results['steps'] = found[0] if len(found) == 1 else (found or None)
                wall['total'] = round(sum(v for v in wall.values() if v is not None), 1)
                wall['this invocation'] = round(time.perf_counter() - started, 1)
                results['written'] = {k: str(v) for k, v in
                                      report.write_report(results, report_dir, report_md).items() if k != 'figures'}
    finally:
        if pool is not None:   # after an error the runs under way finish (and are cached); the rest are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return results


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Command line (module docstring); prints where the report went."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='the toy QUICK setting (every stage, in minutes)')
    p.add_argument('--seeds', default=None,
                   help=f'comma-separated seeds of stage 3, the same for every arm (default: {_join(FULL_SEEDS)}; '
                        f'with --quick {_join(QUICK_SEEDS)})')
    p.add_argument('--arms', default=None, help='comma-separated arms (default: all of scripts.miniature.arms.ARMS)')
    p.add_argument('--steps', type=int, default=None, help="stage-3 optimizer steps (default: the setting's)")
    p.add_argument('--cache_dir', type=Path, default=None, help='default: $TARS_CACHE')
    p.add_argument('--report_dir', type=Path, default=None,
                   help='results.json and figures (default: docs/miniature for the full run, else under the cache)')
    p.add_argument('--report_md', type=Path, default=None,
                   help='markdown whose marked region is regenerated (default: docs/miniature.md for the full run)')
    p.add_argument('--jobs', type=int, default=None,
                   help='arm runs at once, the cores divided among them (default: 2 on a CPU machine with two or '
                        'more cores, else 1)')
    p.add_argument('--launcher', default='python -m scripts.miniature.pipeline',
                   help='how the report names the program before the flags (run.sh passes its own name)')
    a = p.parse_args(argv)
    setting = stages.QUICK if a.quick else stages.FULL
    seeds = parse_list(a.seeds, int) if a.seeds is not None else list(QUICK_SEEDS if a.quick else FULL_SEEDS)
    if not seeds:
        p.error('--seeds: no seed given')
    if a.arms is None:
        from scripts.miniature.arms import ARMS
        arms = list(ARMS)
    else:
        arms = parse_list(a.arms)
        known = set(report.ARM_ORDER)
        unknown = [x for x in arms if x not in known]
        if unknown:
            p.error(f'--arms: unknown arm(s) {unknown}; known: {", ".join(report.ARM_ORDER)}')
    if a.steps is not None and a.steps < 1:
        p.error('--steps must be >= 1')
    if a.jobs is not None and a.jobs < 1:
        p.error('--jobs must be >= 1')
    report_dir, report_md = default_report_paths(setting, a.cache_dir)
    report_dir, report_md = a.report_dir or report_dir, a.report_md or report_md
    command = command_line(a.launcher, argv)
    results = run_pipeline(setting, seeds, arms, a.steps, a.cache_dir, report_dir, report_md, command,
                           a.jobs or default_jobs())
    print(f"report: {results['written']['markdown']} (data and figures in {report_dir})")
    return results


if __name__ == '__main__':
    main()
