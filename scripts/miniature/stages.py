"""The miniature's training stages before the ablation (docs/miniature.md): text ability, then input-side fusion.

- **Stage 1, text ability**: full SFT of the LLM of the small model (``scripts.miniature.model``) on the world's
  TEXT prompts, answered in the systhink format with each item's own thinking text (the ``thinking`` column), at
  a cosine-decayed rate. The audio encoder and projector are frozen (ms-swift's default for a multimodal full
  fine-tune) and unused.
- **Stage 2, input-side fusion**: from the stage-1 checkpoint, full SFT of the projector and the LLM, the
  Whisper-initialised audio encoder frozen (``--freeze_llm false --freeze_vit true --freeze_aligner false``), on
  the spoken items' SPEECH and TEXT prompts (``Setting.stage2_modality='mixed'``). FULL answers the speech prompts
  of half its items directly, without the thinking (``Setting.stage2_speech_thinking``), as spoken
  question-answering data usually are, and the text prompts always with it: the model then hears the values but
  seldom reasons over speech, which is the modality gap stage 3 is to close. Each spoken item also gives a hearing
  row (``Setting.stage2_hearing``, ``scripts.miniature.hearing.probe_row``): its clip asked for the values it says,
  so hearing is trained apart from reasoning and the hearing probe can ask any later checkpoint. Stage 2 goes on in
  phases (``Setting.stage2_phases``, ``stage2_chain``): FULL then trains the hearing rows alone, and then the mixed
  rows again, so that the start hears the values and still answers.
  The paper's baseline is an adapter with a frozen LLM; at this scale no frozen-LLM stage 2 carried the spoken
  values (docs/miniature.md, "What was tried"), hence this deliberate difference. A setting may train on
  transcriptions instead (``'asr_mixed'``, the original's ASR prompt).

Both go through the project's own paths: the preset ``qwen2_5_omni`` and ``swift sft``
(``scripts.recipes.embedded.sft_checkpoint``, the embedded default's warm start), ``trainer.data``'s warm-start
rows, and ``eval.qa`` for the accuracies. Every artefact is cached under ``$TARS_CACHE/miniature/`` by a hash of
its inputs and recipe: the datasets (``data-<hash>``), the model, each stage's checkpoint (``stage1-<hash>``,
``stage2-<hash>``) and its evaluation (``eval/``, resumed item by item by eval.qa). A rerun skips a finished
stage; a stage killed while training starts over (its temporary folder is removed).

    python -m scripts.miniature.stages stage1 [--quick] [--eval_items 300]
    python -m scripts.miniature.stages stage2 [--quick] [--eval_items 300]   # runs stage 1 first if needed

Settings: FULL (the default world, WHISPER_QWEN2_5_OMNI) and QUICK (a world of a few dozen items and the tiny
twin's sizes; two optimizer steps per stage), for the tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from scripts.miniature.model import MODEL_TYPE, QUICK_QWEN2_5_OMNI, WHISPER_QWEN2_5_OMNI, miniature_model_dir
from scripts.miniature.world import WorldConfig
from scripts.recipes.tiny_models import default_cache_dir

STAGES_VERSION = 2   # bump when a stage's data or flags change in a way its recipe does not show
DATASET_NAME = 'miniature'

# ms-swift flags of each stage beyond scripts.recipes.embedded.warm_start_argv (a flag given again wins)
STAGE1_FLAGS = ('--lr_scheduler_type', 'cosine', '--warmup_ratio', '0.03')
# train the projector and the LLM, the (Whisper-initialised) audio encoder frozen: ms-swift's model_arch of
# qwen2_5_omni names thinker.model and thinker.lm_head the LLM, thinker.audio_tower (and visual) the "vit",
# thinker.audio_tower.proj the aligner. Not the paper's frozen-LLM adapter: docs/miniature.md says why.
STAGE2_FLAGS = ('--freeze_llm', 'false', '--freeze_vit', 'true', '--freeze_aligner', 'false',
                '--lr_scheduler_type', 'cosine', '--warmup_ratio', '0.03')


@dataclass(frozen=True)
class Setting:
    """Everything that shapes the stages: the world, the model's shape, the speech set's size, each stage's SFT
    recipe (``scripts.recipes.embedded.warm_start_argv``'s keys) and the evaluation's size."""
    name: str
    world: WorldConfig
    model: Dict = field(hash=False)
    stage1: Dict = field(hash=False)
    stage2: Dict = field(hash=False)
    speech_items: Optional[int] = None   # the first N items of each split are spoken (None: all)
    # stage 2 trains on the first stage2_items spoken train items (None: all of them); the arms of stage 3 train on
    # the spoken train items after those, questions stage 2 never answered (scripts.miniature.arms.train_range)
    stage2_items: Optional[int] = None
    # stage 2's rows (trainer.data.prepare_warmstart_dataset): 'mixed', each spoken item's speech prompt and its
    # text prompt, so that text keeps its level; 'asr_mixed', its transcription instead of its speech prompt, and
    # the answered speech prompts of the first stage2_speech_answers items only (an experiment)
    stage2_modality: str = 'mixed'
    stage2_speech_answers: int = 0
    # stage 2 answers the speech prompts of its first N items with their thinking and the later ones directly (an
    # empty thinking), as spoken question-answering data usually are; None: all with their thinking
    stage2_speech_thinking: Optional[int] = None
    # stage 2 also teaches the hearing probe (scripts.miniature.hearing): each spoken item gives a row asking for
    # the values its clip says, answered by them, so that hearing is trained apart from reasoning
    stage2_hearing: bool = False
    # stage 2's later phases, in order, each a full SFT from the previous phase's checkpoint with the stage-2
    # recipe and flags and its own number of steps: ('probe', N) the hearing rows alone, ('mixed', N) the rows of
    # the first phase again. FULL: the first phase hears a quarter of the values, hearing rows alone raise that to
    # nearly all but unlearn answering, and the mixed rows again bring answering back (docs/miniature.md, "Why
    # stage 2 has three phases")
    stage2_phases: Tuple[Tuple[str, int], ...] = ()
    eval_items: int = 300                # the first N test items are evaluated
    # stage 3's validation curves (scripts.miniature.arms.val_curve): every curve_every optimizer steps, the first
    # curve_items validation items in both modes
    curve_every: int = 10
    curve_items: int = 100
    # the hearing probe of each arm's final adapter: the first N test items (None: eval_items). The start is probed
    # on eval_items; an arm's LoRA on the LLM seldom moves hearing (the encoder is frozen), and fewer items keep the
    # arms' runs cheap
    arm_hearing_items: Optional[int] = None
    max_new_tokens: int = 96             # a systhink answer of the world is 20-45 tokens
    eval_batch_size: int = 32


FULL = Setting(
    'full', WorldConfig(), WHISPER_QWEN2_5_OMNI,
    stage1={'steps': 2400, 'learning_rate': 1.5e-3, 'batch_size': 16, 'prompt_type': 'systhink', 'seed': 0},
    stage2={'steps': 1200, 'learning_rate': 5e-4, 'batch_size': 8, 'prompt_type': 'systhink', 'seed': 0},
    speech_items=4500, stage2_items=3000, stage2_speech_thinking=1500, stage2_hearing=True,
    stage2_phases=(('probe', 600), ('mixed', 600)), eval_items=1200, curve_items=50, arm_hearing_items=300)

QUICK = Setting(
    'quick', WorldConfig(n_train=24, n_validation=6, n_test=6), QUICK_QWEN2_5_OMNI,
    stage1={'steps': 2, 'learning_rate': 1e-3, 'batch_size': 4, 'prompt_type': 'systhink', 'seed': 0},
    stage2={'steps': 2, 'learning_rate': 1e-3, 'batch_size': 2, 'prompt_type': 'systhink', 'seed': 0},
    stage2_items=16, stage2_speech_thinking=8, stage2_hearing=True, stage2_phases=(('probe', 1), ('mixed', 1)),
    eval_items=6, max_new_tokens=16, eval_batch_size=6, curve_every=1, curve_items=6)

SETTINGS = {s.name: s for s in (FULL, QUICK)}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _root(cache_dir: Optional[Path]) -> Path:
    return Path(cache_dir or default_cache_dir()) / 'miniature'


def world_dataset(setting: Setting, speech: bool, cache_dir: Optional[Path] = None) -> Path:
    """The cached hf_format set of the setting's world (``<cache>/miniature/data-<hash>/hf``): text only (every
    item), or spoken (the first ``speech_items`` of each split). A killed build resumes from its cached clips."""
    from scripts.miniature import build
    max_items = setting.speech_items if speech else None
    parts = [dataclasses.asdict(setting.world), speech, max_items]
    if speech:   # who speaks which split is not in the world's config
        parts.append([build.TRAIN_VOICES, build.HELD_OUT_VOICE, build.RATES, build.PITCHES])
    out = _root(cache_dir) / f'data-{_digest(*parts)}'
    if not (out / 'hf' / 'dataset_dict.json').exists():
        build.build_world_dataset(out, setting.world, speech=speech, overwrite=True, max_items=max_items)
    return out / 'hf'


def model_dir(setting: Setting, cache_dir: Optional[Path] = None) -> Path:
    """The setting's random-weight miniature model (scripts.miniature.model, cached)."""
    return miniature_model_dir(setting.world, setting.model, cache_dir=cache_dir)


def _stage(name: str, start: Path, data: Path, recipe: Dict, flags: Sequence[str], modality: str,
           cache_dir: Optional[Path], speech_answers: int = 0, max_rows: Optional[int] = None,
           speech_thinking: Optional[int] = None, hearing: bool = False) -> Path:
    from scripts.recipes.embedded import sft_checkpoint
    parts = [name, recipe, list(flags), modality, start.name, str(data), STAGES_VERSION]
    if speech_answers:   # absent when 0, so the names of earlier checkpoints stay
        parts.append({'speech_answers': speech_answers})
    if max_rows is not None:   # likewise absent when every row is read
        parts.append({'max_rows': max_rows})
    if speech_thinking is not None:   # likewise absent when every speech row thinks
        parts.append({'speech_thinking': speech_thinking})
    probe = None
    if hearing:   # likewise absent without hearing rows
        from scripts.miniature import hearing as hearing_probe
        parts.append({'hearing': hearing_probe.HEARING_VERSION})
        probe = hearing_probe.probe_row
    out = _root(cache_dir) / f'{name}-{_digest(*parts)}'
    return sft_checkpoint(start, data, out, recipe, MODEL_TYPE, modality=modality, extra=flags,
                          speech_answers=speech_answers, max_rows=max_rows, speech_thinking=speech_thinking,
                          probe=probe)


def stage1(setting: Setting = FULL, cache_dir: Optional[Path] = None) -> Path:
    """Stage 1 (text ability): the checkpoint of the full SFT of the setting's model on text prompts (cached)."""
    return _stage('stage1', model_dir(setting, cache_dir), world_dataset(setting, False, cache_dir),
                  setting.stage1, STAGE1_FLAGS, 'text', cache_dir)


PHASES = ('probe', 'mixed')   # the kinds of stage 2's later phases (Setting.stage2_phases)


def stage2_chain(setting: Setting = FULL, cache_dir: Optional[Path] = None) -> List[Path]:
    """Stage 2's checkpoints, one per phase, in order (each cached; runs stage 1 first when it is missing).

    The first phase trains the projector and the LLM of the stage-1 checkpoint on the speech and text prompts (and
    hearing rows) of the first ``stage2_items`` spoken train items, the audio encoder frozen; each of
    ``Setting.stage2_phases`` continues from the previous checkpoint on the hearing rows alone (``probe``) or on
    the first phase's rows again (``mixed``). A phase kind other than PHASES, or a probe phase without
    ``stage2_hearing``, is refused before anything trains."""
    for kind, steps in setting.stage2_phases:
        if kind not in PHASES or steps < 1:
            raise ValueError(f'setting {setting.name}: stage-2 phase ({kind!r}, {steps}): expected one of '
                             f'{", ".join(PHASES)} and a positive step count')
        if kind == 'probe' and not setting.stage2_hearing:
            raise ValueError(f'setting {setting.name}: a probe phase of stage 2 needs stage2_hearing')
    data = world_dataset(setting, True, cache_dir)

    def phase(start: Path, kind: str, recipe: Dict) -> Path:
        if kind == 'probe':
            return _stage('stage2', start, data, recipe, STAGE2_FLAGS, 'probe', cache_dir,
                          max_rows=setting.stage2_items, hearing=True)
        return _stage('stage2', start, data, recipe, STAGE2_FLAGS, setting.stage2_modality, cache_dir,
                      setting.stage2_speech_answers, max_rows=setting.stage2_items,
                      speech_thinking=setting.stage2_speech_thinking, hearing=setting.stage2_hearing)

    chain = [phase(stage1(setting, cache_dir), 'mixed', setting.stage2)]
    for kind, steps in setting.stage2_phases:
        chain.append(phase(chain[-1], kind, dict(setting.stage2, steps=steps)))
    return chain


def stage2(setting: Setting = FULL, cache_dir: Optional[Path] = None) -> Path:
    """Stage 2 (input-side fusion): the checkpoint of its last phase (``stage2_chain``), the start of stage 3."""
    return stage2_chain(setting, cache_dir)[-1]


def evaluate(checkpoint: Path, dataset: Path, modes: Sequence[str], setting: Setting,
             cache_dir: Optional[Path] = None) -> Dict[str, float]:
    """Accuracy (0-1) per mode of ``checkpoint`` on the first ``eval_items`` test items of ``dataset`` with
    ``eval.qa`` (systhink prompt, rule extractor); results under ``<cache>/miniature/eval`` (resumable)."""
    from eval.qa import evaluate as qa_evaluate
    result = qa_evaluate(str(checkpoint), [(DATASET_NAME, str(dataset))], modes=list(modes),
                         out=_root(cache_dir) / 'eval', model_type=MODEL_TYPE, batch_size=setting.eval_batch_size,
                         max_new_tokens=setting.max_new_tokens, max_items=setting.eval_items)
    return {mode: result['datasets'][DATASET_NAME][mode]['accuracy'] for mode in modes}


def accuracy_by_template(checkpoint: Path, mode: str, cache_dir: Optional[Path] = None) -> Dict[str, float]:
    """Accuracy (0-1) per world template of the evaluated items of ``checkpoint`` in ``mode`` (read from eval.qa's
    results, whose ``category`` is the row's subject, i.e. the template)."""
    from eval.metrics import read_results
    paths = list((_root(cache_dir) / 'eval').glob(f'*--{checkpoint.name}/{DATASET_NAME}/{mode}_systhink/results.jsonl'))
    by: Dict[str, List[bool]] = {}
    for path in paths:
        for row in read_results(path):
            by.setdefault(row.get('category') or '', []).append(bool(row['correct']))
    return {t: round(sum(v) / len(v), 4) for t, v in sorted(by.items())}


def run(stage: str, setting: Setting = FULL, cache_dir: Optional[Path] = None, do_eval: bool = True) -> Dict:
    """Run (or find) ``stage`` (stage1 | stage2) and evaluate it (text; stage 2 also audio); return a summary
    (checkpoint, accuracies, wall seconds of training and of the evaluation), also written to its
    ``summary.json``."""
    t0 = time.perf_counter()
    chain = [stage1(setting, cache_dir)] if stage == 'stage1' else stage2_chain(setting, cache_dir)
    checkpoint = chain[-1]
    infos = [json.loads((c / 'warm_start.json').read_text()) for c in chain]
    walls = [i.get('wall_seconds') for i in infos]
    summary: Dict = {'stage': stage, 'setting': setting.name, 'checkpoint': str(checkpoint),
                     'recipe': infos[0]['recipe'], 'flags': infos[0].get('extra'),
                     'train_wall_seconds': None if None in walls else round(sum(walls), 1),
                     'final_loss': (infos[-1].get('losses') or [None])[-1]}
    if len(chain) > 1:   # stage 2's phases: each one's checkpoint, rows, steps, wall seconds and final loss
        summary['phases'] = [{'checkpoint': str(c), 'rows': i.get('modality'), 'steps': i['recipe'].get('steps'),
                              'train_wall_seconds': i.get('wall_seconds'),
                              'final_loss': (i.get('losses') or [None])[-1]} for c, i in zip(chain, infos, strict=True)]
    if do_eval:
        t1 = time.perf_counter()
        modes: Tuple[str, ...] = ('audio', 'text') if stage == 'stage2' else ('text',)
        dataset = world_dataset(setting, stage == 'stage2', cache_dir)
        summary['accuracy'] = evaluate(checkpoint, dataset, modes, setting, cache_dir)
        summary['accuracy_by_template'] = {m: accuracy_by_template(checkpoint, m, cache_dir) for m in modes}
        summary['eval_items'] = setting.eval_items
        summary['eval_wall_seconds'] = round(time.perf_counter() - t1, 1)
    summary['wall_seconds_this_call'] = round(time.perf_counter() - t0, 1)
    (checkpoint / 'summary.json').write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Optional[List[str]] = None) -> None:
    """Command line: run (or find) one stage and print its summary as JSON."""
    p = argparse.ArgumentParser(description='The miniature\'s stage 1 (text SFT) and stage 2 (projector and '
                                            'LLM on speech and text prompts, audio encoder frozen).')
    p.add_argument('stage', choices=('stage1', 'stage2'))
    p.add_argument('--quick', action='store_true', help='the toy QUICK setting (tests)')
    p.add_argument('--cache_dir', type=Path, default=None)
    p.add_argument('--eval_items', type=int, default=None, help='evaluate the first N test items')
    p.add_argument('--no_eval', action='store_true', help='train (or find) the stage only')
    a = p.parse_args(argv)
    setting = QUICK if a.quick else FULL
    if a.eval_items:
        setting = dataclasses.replace(setting, eval_items=a.eval_items)
    print(json.dumps(run(a.stage, setting, a.cache_dir, not a.no_eval), indent=1))


if __name__ == '__main__':
    main()
