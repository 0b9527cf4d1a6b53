"""Paired comparison of two evaluations (docs/evaluation.md "Comparing two runs"):
``python -m eval.compare RUN_A RUN_B``.

RUN_A and RUN_B are two folders at the same level of ``eval.qa``'s output: two models' folders
(``<out>/<model>``: every dataset and mode in them is paired by dataset and mode) or two single runs'
folders (``<out>/<model>/<dataset>/<mode>_<prompt_type>``, each holding ``results.jsonl``). The miniature's
arms are model folders under its cache's ``eval/``. Items are paired on their ``key``. For each dataset and
mode: A's and B's accuracy, the difference A - B with its 95 % paired-bootstrap interval and the exact
McNemar p-value; for each dataset with audio and text in both: the MRR difference (own text accuracy as the
reference) with its interval; over the datasets: Avg(A) and MRR differences. Runs on other items, another
prompt type or another judge are refused in one line naming the difference, before any figure is computed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from eval import metrics as M
from trainer.modes import MODES
from trainer.stats import BOOTSTRAP_RESAMPLES, mcnemar_exact, paired_bootstrap

RESULTS = 'results.jsonl'


class CompareError(ValueError):
    """Two evaluations that cannot be paired (one line naming the difference)."""


def find_runs(folder: Path) -> Dict[Tuple[str, str], Path]:
    """(dataset, mode) -> run folder: the folder itself when it holds ``results.jsonl`` (its dataset the parent
    folder's name), else every ``<dataset>/<mode>_<prompt_type>/results.jsonl`` under it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f'{folder}: not a folder')
    paths = [folder / RESULTS] if (folder / RESULTS).exists() else sorted(folder.glob(f'*/*/{RESULTS}'))
    if not paths:
        raise CompareError(f'{folder}: no {RESULTS} in it nor in its <dataset>/<mode>_<prompt_type> folders')
    runs = {}
    for path in paths:
        settings = _settings(path.parent)
        runs[(path.parent.parent.name, settings['mode'])] = path.parent
    return runs


def _settings(run: Path) -> Dict:
    """The run's settings (its ``config.json`` from eval.qa); mode and prompt type from the folder name when
    the file is absent."""
    path = run / 'config.json'
    if path.exists():
        try:
            return json.loads(path.read_text(encoding='utf-8'))
        except ValueError as err:
            raise CompareError(f'{path}: not valid JSON ({err})') from err
    for mode in sorted(MODES, key=len, reverse=True):   # text_base before text
        if run.name.startswith(mode + '_'):
            return {'mode': mode, 'prompt_type': run.name[len(mode) + 1:], 'extractor': None}
    raise CompareError(f'{run}: neither a config.json nor a <mode>_<prompt_type> folder name')


def _order(run: Tuple[str, str]) -> Tuple[str, int, str]:
    """Datasets by name, modes in trainer.modes.MODES order."""
    return run[0], MODES.index(run[1]) if run[1] in MODES else len(MODES), run[1]


def _judge(settings: Dict) -> str:
    judge = settings.get('extractor') or 'unknown'
    return f"{judge} ({settings['xfinder_model']})" if settings.get('xfinder_model') else judge


def _correct(run: Path) -> Dict[str, float]:
    """key -> 1.0 / 0.0 (an item that failed counts as wrong)."""
    rows = M.read_results(run / RESULTS)
    keys = [r['key'] for r in rows]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise CompareError(f'{run / RESULTS}: key {dup!r} occurs twice')
    return {r['key']: float(bool(r['correct']) and not r.get('error')) for r in rows}


def check_pairable(name: str, run_a: Path, run_b: Path, a: Dict[str, float], b: Dict[str, float]) -> None:
    """Refuse (CompareError, one line) two runs on other items, prompt types or judges."""
    sa, sb = _settings(run_a), _settings(run_b)
    if sa.get('prompt_type') != sb.get('prompt_type'):
        raise CompareError(f"{name}: prompt types differ: A {sa.get('prompt_type')}, B {sb.get('prompt_type')}")
    if _judge(sa) != _judge(sb):
        raise CompareError(f'{name}: judges differ: A {_judge(sa)}, B {_judge(sb)}')
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        example = f'e.g. {only_a[0]!r} only in A' if only_a else f'e.g. {only_b[0]!r} only in B'
        raise CompareError(f'{name}: not the same items: A has {len(a)}, B has {len(b)}, {len(only_a)} only in A, '
                           f'{len(only_b)} only in B ({example})')


def _diff_mean(samples: Sequence[np.ndarray]) -> np.ndarray:
    s = samples[0]
    return s[..., 0].mean(axis=-1) - s[..., 1].mean(axis=-1)


def _mrr_columns(samples: Sequence[np.ndarray], a_cols: Tuple[int, int]) -> np.ndarray:
    """100 x mean over strata of speech accuracy / mean over strata of text accuracy."""
    speech = np.mean([s[..., a_cols[0]].mean(axis=-1) for s in samples], axis=0)
    text = np.mean([s[..., a_cols[1]].mean(axis=-1) for s in samples], axis=0)
    with np.errstate(divide='ignore', invalid='ignore'):
        return 100 * speech / text


def _mrr_diff(samples: Sequence[np.ndarray]) -> np.ndarray:
    """Columns: A speech, A text, B speech, B text."""
    return _mrr_columns(samples, (0, 1)) - _mrr_columns(samples, (2, 3))


def _avg_a_diff(samples: Sequence[np.ndarray]) -> np.ndarray:
    return (np.mean([s[..., 0].mean(axis=-1) for s in samples], axis=0)
            - np.mean([s[..., 2].mean(axis=-1) for s in samples], axis=0))


def _interval(ci: Optional[Tuple[float, float]]) -> Optional[List[float]]:
    return None if ci is None else [ci[0], ci[1]]


def compare(run_a: Path, run_b: Path, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Dict:
    """The paired comparison of two evaluation folders (see the module text), as
    ``{'runs': [{dataset, mode, items, accuracy_a, accuracy_b, difference, difference_ci95, only_a, only_b,
    mcnemar_p}], 'mrr': [{dataset, mrr_a, mrr_b, difference, difference_ci95}], 'overall': {...} or None,
    'unpaired': [(dataset, mode) in one folder only]}``; accuracies as fractions, MRR in %."""
    runs_a, runs_b = find_runs(Path(run_a)), find_runs(Path(run_b))
    single = (Path(run_a) / RESULTS).exists() and (Path(run_b) / RESULTS).exists()
    pairs = ([(next(iter(runs_a)), next(iter(runs_a.values())), next(iter(runs_b.values())))] if single else
             [(k, runs_a[k], runs_b[k]) for k in sorted(set(runs_a) & set(runs_b), key=_order)])
    if not pairs:
        raise CompareError(f'no dataset and mode in common: A has {sorted(runs_a)}, B has {sorted(runs_b)}')
    data: Dict[Tuple[str, str], Tuple[List[str], np.ndarray]] = {}
    for (dataset, mode), ra, rb in pairs:   # every pair is checked before any figure is computed
        a, b = _correct(ra), _correct(rb)
        check_pairable(f'{dataset}/{mode}', ra, rb, a, b)
        keys = sorted(a)
        data[(dataset, mode)] = (keys, np.array([[a[k], b[k]] for k in keys], dtype=float).reshape(-1, 2))
    out: Dict = {'a': str(run_a), 'b': str(run_b), 'runs': [], 'mrr': [], 'overall': None,
                 'unpaired': [] if single else sorted(set(runs_a) ^ set(runs_b))}
    for (dataset, mode), (keys, ab) in data.items():
        only_a = int(((ab[:, 0] == 1) & (ab[:, 1] == 0)).sum())
        only_b = int(((ab[:, 0] == 0) & (ab[:, 1] == 1)).sum())
        out['runs'].append({
            'dataset': dataset, 'mode': mode, 'items': len(keys),
            'accuracy_a': float(ab[:, 0].mean()) if len(keys) else None,
            'accuracy_b': float(ab[:, 1].mean()) if len(keys) else None,
            'difference': float(ab[:, 0].mean() - ab[:, 1].mean()) if len(keys) else None,
            'difference_ci95': _interval(paired_bootstrap(_diff_mean, [ab], n_resamples, seed=seed)),
            'only_a': only_a, 'only_b': only_b, 'mcnemar_p': mcnemar_exact(only_a, only_b)})
    strata = []
    for dataset in sorted({d for d, _ in data}):
        if (dataset, 'audio') not in data or (dataset, 'text') not in data:
            continue
        (keys_s, s), (keys_t, t) = data[(dataset, 'audio')], data[(dataset, 'text')]
        if keys_s != keys_t:
            continue   # audio and text on other items: no per-item pairing of the two modes
        cols = np.stack([s[:, 0], t[:, 0], s[:, 1], t[:, 1]], axis=1)
        strata.append(cols)
        point = _mrr_columns([cols[None]], (0, 1))[0], _mrr_columns([cols[None]], (2, 3))[0]
        out['mrr'].append({'dataset': dataset, 'mrr_a': _finite(point[0]), 'mrr_b': _finite(point[1]),
                           'difference': _finite(point[0] - point[1]),
                           'difference_ci95': _interval(paired_bootstrap(_mrr_diff, [cols], n_resamples, seed=seed))})
    if len(strata) > 1:
        full = [c[None] for c in strata]
        out['overall'] = {
            'datasets': [m['dataset'] for m in out['mrr']],
            'avg_a_difference': float(_avg_a_diff(full)[0]),
            'avg_a_difference_ci95': _interval(paired_bootstrap(_avg_a_diff, strata, n_resamples, seed=seed)),
            'mrr_difference': _finite(_mrr_diff(full)[0]),
            'mrr_difference_ci95': _interval(paired_bootstrap(_mrr_diff, strata, n_resamples, seed=seed))}
    return out


def _finite(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def _pts(x: Optional[float], scale: float = 100.0, sign: bool = False) -> str:
    if x is None:
        return '-'
    return f'{scale * x:+.2f}' if sign else f'{scale * x:.2f}'


def _ci(ci: Optional[Sequence[float]], scale: float = 100.0) -> str:
    return '-' if ci is None else f'[{scale * ci[0]:+.2f}, {scale * ci[1]:+.2f}]'


def markdown(result: Dict) -> str:
    """The comparison as markdown tables (points; MRR in %)."""
    out = [f"A: {result['a']}", f"B: {result['b']}", '',
           '| benchmark (items) | mode | items | A % | B % | A - B (points) | 95 % paired bootstrap | A only | '
           'B only | McNemar exact p |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in result['runs']:
        label = M.benchmark_label(r['dataset'], r['items'])
        out.append(f"| {label} | {r['mode']} | {r['items']} | {_pts(r['accuracy_a'])} | {_pts(r['accuracy_b'])} | "
                   f"{_pts(r['difference'], sign=True)} | {_ci(r['difference_ci95'])} | {r['only_a']} | "
                   f"{r['only_b']} | {r['mcnemar_p']:.4g} |")
    if result['mrr']:
        out += ['', '| dataset | MRR A | MRR B | A - B | 95 % paired bootstrap |', '|---|---|---|---|---|']
        for r in result['mrr']:
            out.append(f"| {r['dataset']} | {_pts(r['mrr_a'], 1)} | {_pts(r['mrr_b'], 1)} | "
                       f"{_pts(r['difference'], 1, sign=True)} | {_ci(r['difference_ci95'], 1)} |")
    o = result['overall']
    if o:
        out += ['', f"Over {', '.join(o['datasets'])}: Avg(A) A - B {_pts(o['avg_a_difference'], sign=True)} points "
                f"{_ci(o['avg_a_difference_ci95'])}; MRR A - B {_pts(o['mrr_difference'], 1, sign=True)} "
                f"{_ci(o['mrr_difference_ci95'], 1)}."]
    if result['unpaired']:
        out += ['', 'In one folder only (not compared): ' + ', '.join(f'{d}/{m}' for d, m in result['unpaired'])]
    return '\n'.join(out) + '\n'


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m eval.compare``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run_a', type=Path, help="A: a model's folder or one run's folder of eval.qa")
    p.add_argument('run_b', type=Path, help='B: a folder at the same level as A')
    p.add_argument('--resamples', type=int, default=BOOTSTRAP_RESAMPLES, help='bootstrap resamples')
    p.add_argument('--json', type=Path, default=None, help='also write the figures to this JSON file')
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.json is not None and args.json.exists():
        raise SystemExit(f'eval.compare: {args.json} exists; choose another --json')
    try:
        result = compare(args.run_a, args.run_b, args.resamples)
    except CompareError as err:
        raise SystemExit(f'eval.compare: {err}') from None
    print(markdown(result), end='')
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
