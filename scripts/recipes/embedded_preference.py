"""The embedded default of ``bash train_dpo.sh`` / ``bash train_sft.sh``: a small preference set built offline.

On top of ``scripts.recipes.embedded`` (tiny twin, small MMLU speech set, SFT warm start), the warm-started model
answers some training questions from the text and from the speech (``scripts.dataset_building.preference``
``generate``), and the two are joined into DPO and SFT files (``build``). Cached under a name hashed from the
recipe, the model (its folder's name, itself a hash) and the dataset's content; an interrupted build resumes.
``python -m scripts.recipes.embedded_preference`` prints the paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from scripts.recipes.embedded import _digest, folder_digest, prepare, run_cli
from trainer.presets import DEFAULT_PRESET

PREFERENCE_SET = {'rows': 24, 'max_samples': 6, 'samples_per_round': 3, 'max_new_tokens': 40, 'val_rows': 4,
                  'seed': 42, 'prompt_type': 'systhink', 'batch_questions': 8, 'batch_size': 8, 'builder': 1}


def preference_set(cache: Path, model_type: str = DEFAULT_PRESET, recipe: Dict = PREFERENCE_SET) -> Dict[str, Path]:
    """Build (or find) the embedded preference set; return the model and the DPO/SFT file paths."""
    from scripts.dataset_building import preference
    paths = prepare(cache, model_type)
    model, dataset = paths['model'], paths['dataset']
    root = cache / 'data' / f'preference-{Path(model).name}-{_digest(recipe, folder_digest(dataset))}'
    out = root / 'set'
    if not (out / 'report.json').exists():
        for mode in ('text', 'audio'):
            preference.generate(str(model), str(dataset), root / 'samples', mode=mode, model_type=model_type,
                                prompt_type=recipe['prompt_type'], max_samples=recipe['max_samples'],
                                samples_per_round=recipe['samples_per_round'],
                                max_new_tokens=recipe['max_new_tokens'], max_rows=recipe['rows'],
                                batch_questions=recipe['batch_questions'], batch_size=recipe['batch_size'],
                                backend='transformers', seed=recipe['seed'])
        # report.json is written last: without it an earlier build was interrupted, so redo the join
        preference.build(str(dataset), root / 'samples', out, prompt_type=recipe['prompt_type'],
                         val_rows=recipe['val_rows'], seed=recipe['seed'], overwrite=True)
    files = {name: out / f'{name}.jsonl' for name in ('dpo', 'dpo_val', 'sft', 'sft_val')}
    return dict(model=Path(model), dataset=Path(dataset), report=out / 'report.json', **files)


def main(argv: Optional[List[str]] = None) -> None:
    run_cli('Build the embedded preference set (tiny model, offline).', preference_set, argv)


if __name__ == '__main__':
    main()
