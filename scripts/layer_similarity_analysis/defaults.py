"""The embedded tiny default of the analysis (the tiny preset; README "What bash train_grpo.sh does"):
the offline MMLU speech set and the newest GRPO checkpoint of the embedded default under
``output/grpo/*/checkpoint-*``, or the SFT warm-started tiny model when no GRPO run exists.

``python -m scripts.layer_similarity_analysis.defaults`` prints, tab-separated, what ``run.sh`` analyses
with no arguments: ``dataset<TAB>label<TAB>path`` and ``model<TAB>label<TAB>path<TAB>base`` lines.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

from scripts.recipes.embedded import prepare
from scripts.recipes.tiny_models import default_cache_dir
from trainer.engine import resolve_model

from .outputs import REPO

log = logging.getLogger(__name__)
GRPO_ROOT = REPO / 'output' / 'grpo'


def _step(path: Path) -> int:
    tail = path.name.rsplit('-', 1)[-1]
    return int(tail) if tail.isdigit() else -1


def latest_grpo_checkpoint(root: Path = GRPO_ROOT) -> Optional[Path]:
    """The most recently written ``checkpoint-N`` (highest N on ties) of any run under ``root``."""
    found = [p for p in root.glob('*/checkpoint-*')
             if p.is_dir() and ((p / 'adapter_config.json').is_file() or (p / 'config.json').is_file())]
    return max(found, key=lambda p: (p.stat().st_mtime, _step(p)), default=None)


def embedded_default(cache: Optional[Path] = None) -> Dict[str, Optional[str]]:
    """dataset, warm (the SFT warm start), checkpoint (None without a GRPO run) and its base."""
    paths = prepare(cache or default_cache_dir())
    out = {'dataset': str(paths['dataset']), 'warm': str(paths['model']), 'checkpoint': None, 'base_model': None}
    ckpt = latest_grpo_checkpoint()
    if ckpt is not None:
        out['checkpoint'] = str(ckpt)
        try:
            resolve_model(str(ckpt))
        except FileNotFoundError:
            log.warning('%s: its base model is gone; using the embedded warm start %s', ckpt, out['warm'])
            out['base_model'] = out['warm']
    return out


def main() -> None:
    d = embedded_default()
    print(f"dataset\tMMLU speech (embedded)\t{d['dataset']}")
    print(f"model\tSFT warm start\t{d['warm']}\t")
    if d['checkpoint']:
        print(f"model\tTARS GRPO\t{d['checkpoint']}\t{d['base_model'] or ''}")


if __name__ == '__main__':
    main()
