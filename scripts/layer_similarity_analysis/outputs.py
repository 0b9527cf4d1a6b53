"""Where a measurement goes: ``<root>/<dataset-name>--<model-name>/`` with ``layer_stats.json`` and the
plot (docs/original.md §8 names the run after the last two parts of the dataset and model paths; here
one directory, and an existing one is never written into: a ``-2``, ``-3``... suffix is used).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict

from trainer.jsonl import write_json_atomic

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / 'output' / 'layer_similarity'
STATS_FILE = 'layer_stats.json'
PLOT_STEM = 'layer_similarity'


def short_name(path_or_id: str, parts: int = 2) -> str:
    """The last ``parts`` components of a path or hub id joined by '-', safe as a file name."""
    pieces = [p for p in re.split(r'[\\/]+', str(path_or_id).rstrip('/\\')) if p not in ('', '.', '..')]
    name = '-'.join(pieces[-parts:]) or 'unnamed'
    return re.sub(r'[^A-Za-z0-9._+=-]+', '_', name)


def new_run_dir(root: Path, dataset_name: str, model_name: str) -> Path:
    """Create and return ``root/<dataset_name>--<model_name>``, or the first free ``-N`` variant of it.

    A directory is claimed by creating it (atomic), so concurrent runs never share one."""
    root.mkdir(parents=True, exist_ok=True)
    stem = f'{dataset_name}--{model_name}'
    for n in range(1, 10_000):
        path = root / (stem if n == 1 else f'{stem}-{n}')
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f'no free run directory for {stem} under {root}')


def write_stats(run_dir: Path, stats: Dict) -> Path:
    """``run_dir/layer_stats.json``, written atomically (NaN as null); returns its path."""
    path = run_dir / STATS_FILE
    write_json_atomic(path, stats)
    return path


def read_stats(path: str) -> Dict:
    """layer_stats.json from a file or a run directory."""
    p = Path(path)
    return json.loads((p / STATS_FILE if p.is_dir() else p).read_text())
