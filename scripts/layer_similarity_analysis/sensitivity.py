"""The layer-sensitivity bar chart: accuracy per choice of the representation reward's layers
(docs/original.md §8, ``0102_paper_layer_sensitivity.py``). The default table holds the paper's numbers.

    python -m scripts.layer_similarity_analysis.sensitivity [--table TABLE.csv|.json] \\
        [--out output/layer_similarity/layer_sensitivity] [--ylabel TEXT]

TABLE: CSV with a header containing ``label`` and ``accuracy`` (other columns are ignored; lines starting
with ``#`` are comments), or a JSON list of {"label", "accuracy"}. Writes ``OUT.png`` and ``OUT.pdf``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from .outputs import DEFAULT_ROOT
from .plots import load_table, plot_sensitivity

PAPER_TABLE = Path(__file__).resolve().parent / 'paper_layer_sensitivity.csv'


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--table', default=str(PAPER_TABLE))
    p.add_argument('--out', type=Path, default=DEFAULT_ROOT / 'layer_sensitivity',
                   help='output path without extension (.png and .pdf are written)')
    p.add_argument('--ylabel', default='average speech accuracy (%)')
    args = p.parse_args(argv)
    paths = plot_sensitivity(load_table(args.table), args.out, args.ylabel)
    for path in paths:
        print(path)
    return paths


if __name__ == '__main__':
    main()
