"""One figure comparing several runs on several datasets, side by side with shaded 95 % t-intervals
(docs/original.md §8, ``aggregate_plots_paper.py``; Figures 2 and 3 of the paper). Each run is named on
the command line (the original guessed R_base / R_base+R_rep / ... from directory-name prefixes).

    python -m scripts.layer_similarity_analysis.aggregate \\
        --run R_base MMSU output/layer_similarity/mmsu--base \\
        --run TARS   MMSU output/layer_similarity/mmsu--tars \\
        --run R_base OBQA output/layer_similarity/obqa--base \\
        --run TARS   OBQA output/layer_similarity/obqa--tars \\
        [--measure token|pooled] [--ylim 0.92 1.0] [--out output/layer_similarity/layer_sim_analysis_combined]

``--run LABEL DATASET PATH``: PATH is a run directory of ``measure`` or its ``layer_stats.json``. Writes
``OUT.png`` and ``OUT.pdf``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .outputs import DEFAULT_ROOT, read_stats
from .plots import MEASURES, plot_comparison


def main(argv: Optional[Sequence[str]] = None) -> Tuple[List[Path], Dict[str, List[str]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', nargs=3, action='append', required=True, metavar=('LABEL', 'DATASET', 'PATH'))
    p.add_argument('--measure', choices=sorted(MEASURES), default='token')
    p.add_argument('--ylim', type=float, nargs=2, default=None)
    p.add_argument('--out', type=Path, default=DEFAULT_ROOT / 'layer_sim_analysis_combined',
                   help='output path without extension (.png and .pdf are written)')
    args = p.parse_args(argv)
    runs = [(label, dataset, read_stats(path)) for label, dataset, path in args.run]
    paths, drawn = plot_comparison(runs, args.out, args.measure, args.ylim)
    for dataset, labels in drawn.items():
        print(f'{dataset}: {", ".join(labels)}')
    for path in paths:
        print(path)
    return paths, drawn


if __name__ == '__main__':
    main()
