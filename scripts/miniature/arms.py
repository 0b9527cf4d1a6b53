"""The miniature's stage 3 (docs/miniature.md): the ablation arms, each a LoRA run from the stage-2 checkpoint.

| arm | entry point | rewards / loss |
|---|---|---|
| ``sft`` | ``trainer.preference_train sft`` (``swift sft``) | NLL of the chosen answer |
| ``dpo`` | ``trainer.preference_train dpo`` (``swift rlhf --rlhf_type dpo``) | DPO, sigmoid, beta 0.1 |
| ``grpo`` | ``trainer.grpo`` | tars_format tars_accuracy |
| ``grpo_rep`` | ``trainer.grpo`` | + tars_representation |
| ``grpo_beh`` | ``trainer.grpo`` | + tars_behaviour |
| ``tars`` | ``trainer.grpo`` | all four |
| ``tars_global`` | ``trainer.grpo --advantage_norm group`` | all four, one baseline per question |
| ``opsd`` | ``trainer.grpo --prompt_modality a``, ``teacher_prompt`` | per-token reverse KL to its text-reading self |
| ``rlsd`` | ``trainer.grpo --advantage_reweight rlsd``, ``teacher_prompt`` | grpo's, reweighted per token |

Every arm runs the project's own entry points in this process (``trainer.grpo.main``,
``trainer.preference_train.main``: the functions ``python -m trainer.grpo`` / ``python -m
trainer.preference_train`` call), with their defaults (the paper's LoRA on every linear layer of the LLM, the audio
encoder and projector frozen; GRPO: DAPO loss, no KL, per-modality baselines, ``--prompt_modality mixed``, the
offline MiniLM embedder), then the stage's recipe (``STAGE3``) on top. The GRPO rollouts use the transformers
engine (no vLLM).

**Equal steps, same data order.** Every arm makes ``steps`` optimizer steps from the stage-2 checkpoint
(``scripts.miniature.stages.stage2``) on the train split of the spoken world set
(``stages.world_dataset(setting, True)``), the spoken items after the first ``Setting.stage2_items`` that stage 2
trained on (``train_range``): like the paper's RL data, questions the start checkpoint was never taught, so the
training rollouts fail where the test answers fail. The rows are put in one order, the split's shuffled by ``DATA_SEED``
(``random.Random(DATA_SEED).shuffle``, the preference builder's own shuffle), and every trainer reads them in that
order (``--dataset_shuffle false``, ``--train_dataloader_shuffle false``): the k-th step of every arm and seed sees
the same questions. An arm's ``seed`` is ms-swift's ``--seed`` (the LoRA initialisation, dropout, GRPO sampling).

**The rivals opsd and rlsd: on-policy self-distillation across modalities.** The teacher is the current policy
reading the item's TEXT prompt (ms-swift's ``teacher_prompt`` column with no teacher model; the teacher view carries
no audio, ``trainer.grpo_trainer.TextTeacherSample``), scoring each token the student sampled from the SPEECH prompt.
``opsd`` (X-OPD's idea) samples every rollout from speech and learns only from the teacher: each token's advantage is
log p_teacher - log p_student of that token (ms-swift's OPD-RL term, the rewards weighted 0), whose expectation under
the student is minus the per-token reverse KL. ``rlsd`` is standard GRPO whose advantage ms-swift reweights per token
by the same log-ratio (``--advantage_reweight rlsd``). Both are arms of the GRPO trainer: same steps, questions per
step, rollouts per question, LoRA, rate, seeds and data order as ``grpo``. ms-swift's ``--rlhf_type gkd`` with a
``teacher_prompt`` was not used: its teacher view keeps the student's audio (its samples have a ``teacher_images``
switch, none for audio, and the template puts a clip without its tag back in front of the first message), so its
teacher would hear the question as well as read it.

**Common random numbers.** Every arm with seed s gets ``--seed s`` (ms-swift seeds everything from it before the
LoRA is made: the same initial adapter for every arm, ``tests/test_miniature_arms_crn.py``), ``--data_seed``
DATA_SEED and the one data order below, so the paired differences between arms over seeds cancel what the seed
alone decides.

**Validation curves and the all-wrong statistic.** The adapter is saved every ``Setting.curve_every`` steps; after
training each saved adapter is evaluated with ``eval.qa`` on the first ``Setting.curve_items`` validation items in
both modes (``val_curve``), after the step-0 point, the stage-2 checkpoint, evaluated once for every arm and seed
(``<cache>/miniature/eval-curve<N>/``). The GRPO arms dump their rollouts (``--dump_rollouts``); ``allwrong`` reads
the share of non-zero advantages among the speech rollouts of the (question, step) groups whose speech rollouts
were all wrong; for ``opsd``, whose dumped (sequence) advantage is 0 by construction, a rollout counts when its
per-token teacher term is non-zero (the dump's ``teacher_gap``).

**Preference data of sft and dpo: the world's gold answers.** The project's preference builder
(``scripts.dataset_building.preference``) has two sources: ``generate`` + ``build`` (chosen = a correct
text-conditioned answer of the model, rejected = a wrong speech-conditioned answer, the paper's) and
``from_columns`` (an hf_format set with ``chosen`` / ``rejected`` columns). The model's own answers give no pair for a
question it never answers correctly in text, and none at all for the QUICK model (random weights write no
answer), and their number would differ between start checkpoints, i.e. between runs of the experiment; so the
arms use ``from_columns`` on the world's train split with chosen = the gold systhink answer (the item's thinking and
the right letter) and rejected = the same thinking with a wrong letter (chosen by a hash of the key), on the
speech prompt (``prompt_modality a``, the paper's DPO setting). SFT trains on the chosen answers. Every train row is
used (no validation rows are held out).

**Caching.** An arm run is ``<cache>/miniature/arms/<arm>-s<seed>-<hash>/`` (hash of the start checkpoint's name,
the recipe, the steps, the arm, the seed and the evaluation sizes) holding ``metrics.json`` (see ``run_arm``; its
paths relative to ``<cache>/miniature/``), ``train/`` (ms-swift's output folder: ``logging.jsonl``, the LoRA
checkpoints), ``eval/`` and ``curve/`` (``eval.qa``'s results) and, for the GRPO arms, ``rollouts.jsonl``. A run
is built in ``<name>.tmp`` and renamed when ``metrics.json`` is written, so a finished run is returned without work
and a killed one leaves only the temporary folder, removed by the next call (which starts over). The prepared
training files are shared by the arms (``arms/data-<hash>``, built in a temporary folder as well). Two processes
must not run the same arm at once.

    python -m scripts.miniature.arms ARM --seed N [--quick] [--steps N] [--cache_dir DIR] [--set KEY=VALUE ...]
    # prints metrics.json; --set changes a STAGE3 entry (or sets train_questions) for a pilot
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from scripts.miniature import stages
from scripts.miniature.model import MODEL_TYPE
from scripts.miniature.stages import DATASET_NAME, Setting

ARMS: Tuple[str, ...] = ('sft', 'dpo', 'grpo', 'grpo_rep', 'grpo_beh', 'tars', 'tars_global', 'opsd', 'rlsd')
PREFERENCE_ARMS = ('sft', 'dpo')
# The rivals whose teacher is the current policy reading the item's text prompt (a teacher_prompt column, ms-swift's
# on-policy self-distillation, the teacher view without the audio: trainer.grpo_trainer.TextTeacherSample).
TEACHER_ARMS = ('opsd', 'rlsd')
BASE_REWARDS = ('tars_format', 'tars_accuracy')
ARM_REWARDS: Dict[str, Tuple[str, ...]] = {
    'grpo': BASE_REWARDS,
    'grpo_rep': BASE_REWARDS + ('tars_representation',),
    'grpo_beh': BASE_REWARDS + ('tars_behaviour',),
    'tars': BASE_REWARDS + ('tars_representation', 'tars_behaviour'),
    'tars_global': BASE_REWARDS + ('tars_representation', 'tars_behaviour'),
    'opsd': BASE_REWARDS,   # computed and logged, weight 0: the teacher's log-ratio is the whole signal
    'rlsd': BASE_REWARDS,
}
ADVANTAGE_NORM = {'tars_global': 'group'}   # every other GRPO arm: 'modality' (the paper)
# Flags of the teacher arms beyond the GRPO arms' (ms-swift's GRPO with a teacher_prompt column and no teacher model:
# the teacher is the current policy on that prompt, scoring the student's sampled tokens under no_grad).
# opsd: every rollout from the speech prompt (the student), the rewards weighted 0, so each token's advantage is
#   teacher_kl_coef x (log p_teacher - log p_student) of its sampled token: the per-token reverse KL of on-policy
#   distillation, its single-sample estimate, as a dense per-token reward.
# rlsd: standard GRPO (mixed rollouts, format + accuracy) whose per-sequence advantage is reweighted per token by
#   the same teacher's log-ratio (ms-swift's defaults: lambda 0.5, weights clipped to [0.8, 1.2]); a text rollout's
#   teacher prompt is its own prompt, so its weights are 1.
ADDITIVE_TEACHER = ('opsd',)   # the teacher's log-ratio is added to each token's advantage (allwrong)
PROMPT_MODALITY = {'opsd': 'a'}   # every other GRPO arm: 'mixed' (the paper)
TEACHER_FLAGS: Dict[str, Tuple[str, ...]] = {
    'opsd': ('--reward_weights', '0', '0', '--teacher_kl_coef', '1.0'),
    'rlsd': ('--advantage_reweight', 'rlsd'),
}
DATA_SEED = 0          # the one data order of every arm and seed
ARMS_VERSION = 2       # bump when an arm's data or flags change in a way its recipe does not show
EVAL_MODES = ('audio', 'text')

# Stage-3 recipes per setting name. grpo_questions questions per optimizer step, each with num_generations
# rollouts (half speech, half text: prompt_modality mixed); the sft and dpo arms take pref_batch_size rows per
# step. One generation batch per optimizer step (gradient accumulation 1).
# FULL: 100 steps at 6e-4, one rate for every arm (docs/miniature.md, "What was tried"): from an older start at
# 1e-3 every GRPO pilot lost arithmetic, in text too, and at 1e-4 nothing moved in 40 steps; from a start whose
# stage 2 answers half its speech prompts directly, 3e-4 moved standard GRPO by less than its seed interval
# (+12.8 +- 13.3 points), while 6e-4 moved it by +19.8 +- 9.4 with text kept at 100 %.
STAGE3: Dict[str, Dict] = {
    'full': {'steps': 100, 'learning_rate': 6e-4, 'lora_rank': 8, 'lora_alpha': 32, 'grpo_questions': 2,
             'num_generations': 8, 'max_completion_length': 64, 'temperature': 1.0, 'overlong_filter': True,
             'pref_batch_size': 8, 'dpo_beta': 0.1},
    # two rollouts per modality (one per cell would give every advantage 0), room for a systhink answer (20-45
    # tokens); the QUICK model rarely ends a completion, and the overlong filter (the paper's) would then mask
    # every token out of the loss
    'quick': {'steps': 2, 'learning_rate': 1e-3, 'lora_rank': 8, 'lora_alpha': 32, 'grpo_questions': 2,
              'num_generations': 4, 'max_completion_length': 48, 'temperature': 1.0, 'overlong_filter': False,
              'pref_batch_size': 2, 'dpo_beta': 0.1},
}


# Recipe entries only a pilot sets (``--set``), absent from a recipe unless given, so the arms' run names stay those
# of STAGE3: ``train_questions`` N > 0 trains on the first N questions of the data order only, cycled (a check that
# the trainer learns what it is rewarded for: its training rollouts' accuracy on questions it sees again).
PILOT_ENTRIES: Dict[str, int] = {'train_questions': 0}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _arms_root(cache_dir: Optional[Path]) -> Path:
    return stages._root(cache_dir) / 'arms'


def wrong_letter(key: str, answer_index: int, n_options: int = 4) -> str:
    """A wrong option letter for the rejected answer of item ``key``, fixed by a hash of the key (never
    ``answer_index``)."""
    from trainer.answer import LETTERS
    shift = 1 + int(hashlib.sha256(key.encode()).hexdigest(), 16) % (n_options - 1)
    return LETTERS[(answer_index + shift) % n_options]


def data_order(n: int) -> List[int]:
    """The one order of the n train rows every arm reads: ``random.Random(DATA_SEED).shuffle`` of 0..n-1 (the
    shuffle ``scripts.dataset_building.preference`` applies to its rows with seed DATA_SEED)."""
    order = list(range(n))
    random.Random(DATA_SEED).shuffle(order)
    return order


def _built(out: Path, build) -> Path:
    """``out`` built by ``build(tmp)`` in a temporary sibling folder then renamed (a killed build leaves only
    the temporary folder, removed by the next call). The clip paths (``audios``) of the JSONL files written
    under ``tmp`` are moved to ``out`` before the rename."""
    from trainer import jsonl
    if out.exists():
        return out
    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    prefix = str(tmp.resolve()) + '/'
    for path in tmp.rglob('*.jsonl'):
        rows = jsonl.read(path, missing_ok=False)
        for row in rows:
            row['audios'] = [str(out.resolve() / a[len(prefix):]) if a.startswith(prefix) else a
                             for a in row.get('audios') or []]
        jsonl.write_atomic(path, rows)
    tmp.rename(out)
    return out


def grpo_data(setting: Setting, cache_dir: Optional[Path] = None) -> Path:
    """The GRPO arms' ms-swift rows (``trainer.data``'s GRPO rows, speech prompts + the text prompt for the mixed
    rollouts) of the spoken world's train items in ``train_range``, in ``data_order``:
    ``arms/data-<hash>/grpo.jsonl``."""
    from trainer import jsonl
    from trainer.data import load_grpo_split, write_grpo_split
    world = stages.world_dataset(setting, True, cache_dir)
    first, end = train_range(setting)

    def build(tmp: Path) -> None:
        ds = load_grpo_split(str(world), prompt_type='systhink', prompt_modality='mixed', split='train')
        ds = ds.select(range(first, end))
        path = write_grpo_split(ds, str(world), tmp / 'grpo.jsonl', tmp / 'audio', 'systhink', 'mixed')
        rows = jsonl.read(path, missing_ok=False)
        jsonl.write_atomic(path, [rows[i] for i in data_order(len(rows))])

    name = f'data-grpo-{_digest(str(world), DATA_SEED, ARMS_VERSION, *_range_key(setting))}'
    return _built(_arms_root(cache_dir) / name, build) / 'grpo.jsonl'


def teacher_data(setting: Setting, cache_dir: Optional[Path] = None) -> Path:
    """The teacher arms' rows: ``grpo_data``'s, same order, each with ``teacher_prompt`` = its text prompt (the
    column ms-swift's self-distillation teacher reads): ``arms/data-teacher-<hash>/grpo.jsonl``."""
    from trainer import jsonl
    from trainer.data import TEXT_PROMPT
    grpo = grpo_data(setting, cache_dir)

    def build(tmp: Path) -> None:
        rows = jsonl.read(grpo, missing_ok=False)
        jsonl.write_atomic(tmp / 'grpo.jsonl', [dict(row, teacher_prompt=row[TEXT_PROMPT]) for row in rows])

    name = f'data-teacher-{_digest(grpo.parent.name, ARMS_VERSION)}'
    return _built(_arms_root(cache_dir) / name, build) / 'grpo.jsonl'


def arm_data(arm: str, setting: Setting, cache_dir: Optional[Path] = None) -> Path:
    """The training rows of ``arm``: the preference rows (sft, dpo), the teacher rows (opsd, rlsd) or the GRPO
    rows, all in the one data order."""
    if arm in PREFERENCE_ARMS:
        return preference_data(setting, cache_dir)[arm]
    return teacher_data(setting, cache_dir) if arm in TEACHER_ARMS else grpo_data(setting, cache_dir)


def preference_data(setting: Setting, cache_dir: Optional[Path] = None) -> Dict[str, Path]:
    """The sft and dpo arms' rows: ``preference.from_columns`` on the spoken world's train split with the gold
    systhink answer as ``chosen`` and a wrong-letter one as ``rejected`` (module docstring), speech prompts, every
    row kept, shuffled with DATA_SEED. Returns ``{'dpo': path, 'sft': path}`` under ``arms/data-pref-<hash>``."""
    import datasets

    from scripts.dataset_building import preference
    from trainer.answer import LETTERS
    from trainer.prompts import systhink_answer
    from trainer.schema import load_hf_dataset
    world = stages.world_dataset(setting, True, cache_dir)
    first, end = train_range(setting)

    def build(tmp: Path) -> None:
        ds = load_hf_dataset(str(world), 'train').select(range(first, end))
        keys, thinking, gold = ds['key'], ds['thinking'], ds['answer_index']
        chosen = [systhink_answer(t, LETTERS[g]) for t, g in zip(thinking, gold, strict=True)]
        rejected = [systhink_answer(t, wrong_letter(k, g)) for k, t, g in zip(keys, thinking, gold, strict=True)]
        ds = ds.add_column('chosen', chosen).add_column('rejected', rejected)
        datasets.DatasetDict({'train': ds}).save_to_disk(str(tmp / 'hf'))
        preference.from_columns(str(tmp / 'hf'), tmp / 'set', split='train', prompt_type='systhink',
                                prompt_modality='a', val_rows=0, seed=DATA_SEED)
        shutil.rmtree(tmp / 'hf')   # the set holds its own clips (set/audio)

    name = f'data-pref-{_digest(str(world), DATA_SEED, ARMS_VERSION, *_range_key(setting))}'
    root = _built(_arms_root(cache_dir) / name, build)
    return {kind: root / 'set' / f'{kind}.jsonl' for kind in PREFERENCE_ARMS}


def recipe_for(setting: Setting, steps: Optional[int] = None, overrides: Optional[Dict] = None) -> Dict:
    """The setting's stage-3 recipe with ``steps`` (when given) and ``overrides`` (a pilot's changed entries,
    ``--set key=value``) in place of its own. An unknown key, or a value of another type than the recipe's, is
    refused."""
    recipe = dict(STAGE3[setting.name])
    known = {**recipe, **PILOT_ENTRIES}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f'--set {key}: not a stage-3 recipe entry (one of {", ".join(known)})')
        if type(value) is not type(known[key]) and not (isinstance(known[key], float) and type(value) is int):
            raise ValueError(f'--set {key}={value!r}: expected a {type(known[key]).__name__}')
        recipe[key] = value
    n = recipe.get('train_questions')
    if n is not None and not 0 < n <= train_rows(setting):   # refused here, before any stage runs
        raise ValueError(f'--set train_questions={n}: must be in 1..{train_rows(setting)} '
                         "(the arms' spoken train items)")
    if steps is not None:
        recipe['steps'] = int(steps)
    return recipe


def train_range(setting: Setting) -> Tuple[int, int]:
    """The spoken train items the arms train on, as (first, end) indices of the train split: those after stage
    2's first ``stage2_items`` (all spoken items when it is None), so stage 3 rewards answers to questions stage 2
    was never taught (as the paper's RL data are new to the model). Refused when none is left."""
    n = setting.world.n_train
    spoken = min(n, setting.speech_items) if setting.speech_items is not None else n
    first = setting.stage2_items or 0
    if first >= spoken:
        raise ValueError(f'setting {setting.name}: stage2_items={first} leaves none of the {spoken} spoken train '
                         'items to stage 3 (raise speech_items)')
    return first, spoken


def _range_key(setting: Setting) -> List:
    """Part of the arms' data names: empty when the arms read every spoken item, so the names made before
    ``stage2_items`` existed stay."""
    return [] if not setting.stage2_items else [{'train_range': list(train_range(setting))}]


def train_rows(setting: Setting) -> int:
    """The number of rows of the arms' data (``train_range``)."""
    first, end = train_range(setting)
    return end - first


def cycled(rows: Sequence, n: int, total: int) -> List:
    """The first ``n`` rows repeated in their order until ``total`` rows (``train_questions``)."""
    if not 0 < n <= len(rows):
        raise ValueError(f'train_questions must be in 1..{len(rows)}, got {n}')
    return [rows[i % n] for i in range(total)]


def parse_override(text: str) -> Tuple[str, object]:
    """``key=value`` of ``--set``: the value read as JSON (``4``, ``3e-4``, ``true``), else kept as a string."""
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise ValueError(f'--set {text!r}: expected key=value')
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def common_flags(start: Path, recipe: Dict, seed: int, output_dir: Path, save_every: Optional[int] = None) -> List[str]:
    """ms-swift flags every arm shares (after the entry point's own defaults): model, the CPU settings, the
    LoRA size, the steps, a saved adapter every ``save_every`` steps (default: one at the end), all kept (the
    validation curve evaluates each; no optimizer state, a killed run starts over), a log line per step, the
    seeds and the fixed order."""
    steps = str(recipe['steps'])
    every = save_every or recipe['steps']
    return ['--model', str(start), '--model_type', MODEL_TYPE, '--output_dir', str(output_dir), '--add_version',
            'false', '--split_dataset_ratio', '0', '--check_model', 'false', '--torch_dtype', 'float32', '--fp16',
            'false', '--bf16', 'false', '--gradient_checkpointing', 'false', '--dataloader_num_workers', '0',
            '--dataset_num_proc', '1', '--report_to', 'none', '--lora_rank', str(recipe['lora_rank']),
            '--lora_alpha', str(recipe['lora_alpha']), '--learning_rate', str(recipe['learning_rate']),
            '--warmup_ratio', '0', '--max_steps', steps, '--save_steps', str(every),
            '--save_total_limit', str(recipe['steps'] // every + 1), '--save_only_model', 'true',
            '--logging_steps', '1', '--gradient_accumulation_steps', '1', '--eval_strategy', 'no',
            '--seed', str(seed), '--data_seed', str(DATA_SEED), '--dataset_shuffle', 'false',
            '--train_dataloader_shuffle', 'false']


def arm_argv(arm: str, start: Path, data: Path, recipe: Dict, seed: int, output_dir: Path,
             save_every: Optional[int] = None, dump: Optional[Path] = None) -> List[str]:
    """The argv of the arm's entry point (``trainer.grpo.main`` or ``trainer.preference_train.main``); a GRPO
    arm dumps its rollouts to ``dump`` when given (``--dump_rollouts``, read by ``allwrong``)."""
    flags = common_flags(start, recipe, seed, output_dir, save_every) + ['--dataset', str(data)]
    if arm in PREFERENCE_ARMS:
        flags += ['--per_device_train_batch_size', str(recipe['pref_batch_size'])]
        if arm == 'dpo':
            flags += ['--beta', str(recipe['dpo_beta'])]
        return [arm] + flags
    if arm not in ARM_REWARDS:
        raise ValueError(f'arm must be one of {ARMS}, got {arm!r}')
    return ['--prompt_modality', PROMPT_MODALITY.get(arm, 'mixed'), '--embedder', 'minilm', *TEACHER_FLAGS.get(arm, ()),
            '--advantage_norm', ADVANTAGE_NORM.get(arm, 'modality'),
            '--reward_funcs', *ARM_REWARDS[arm],
            '--num_generations', str(recipe['num_generations']),
            '--per_device_train_batch_size', str(recipe['grpo_questions'] * recipe['num_generations']),
            '--max_completion_length', str(recipe['max_completion_length']),
            '--temperature', str(recipe['temperature']),
            '--overlong_filter', str(recipe['overlong_filter']).lower(), '--use_vllm', 'false',
            *(['--dump_rollouts', str(dump)] if dump is not None else [])] + flags


def checkpoints(output_dir: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-N`` folder of an ms-swift output folder, by step."""
    found = [(int(p.name.split('-')[-1]), p) for p in output_dir.glob('checkpoint-*')
             if p.name.split('-')[-1].isdigit()]
    return sorted(found)


def last_checkpoint(output_dir: Path) -> Path:
    """The newest ``checkpoint-N`` folder of an ms-swift output folder."""
    found = checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f'{output_dir}: no checkpoint-* folder after training')
    return found[-1][1]


def check_curve_steps(setting: Setting, steps: int) -> None:
    """Refuse a step count the validation curve cannot sample: a checkpoint is saved every ``curve_every`` steps,
    and the last one is the evaluated adapter."""
    if setting.curve_every < 1 or steps % setting.curve_every:
        raise ValueError(f'steps={steps}: must be a multiple of curve_every={setting.curve_every} '
                         '(the validation curve evaluates a checkpoint every curve_every steps)')


def engine_for(checkpoint: Path, setting: Setting):
    """The inference engine ``eval.qa`` would build for ``checkpoint`` (``trainer.engine.build_engine``), to share
    between evaluations of the same checkpoint."""
    from trainer.engine import build_engine, resolve_model
    return build_engine(resolve_model(str(checkpoint), None, MODEL_TYPE), 'auto', setting.eval_batch_size)


def accuracy(checkpoint: Path, setting: Setting, out: Path, split: str, items: int,
             cache_dir: Optional[Path] = None, engine=None) -> Dict[str, float]:
    """Accuracy (0-1) per mode of EVAL_MODES of ``checkpoint`` (a model or a LoRA adapter folder) with
    ``eval.qa`` on the first ``items`` items of ``split`` of the spoken world (results under ``out``, resumed item
    by item); ``engine``: one already built for it (``engine_for``), else eval.qa builds one."""
    from eval.qa import evaluate as qa_evaluate
    world = stages.world_dataset(setting, True, cache_dir)
    result = qa_evaluate(str(checkpoint), [(DATASET_NAME, str(world))], modes=list(EVAL_MODES), out=out,
                         model_type=MODEL_TYPE, batch_size=setting.eval_batch_size,
                         max_new_tokens=setting.max_new_tokens, max_items=items, split=split, engine=engine)
    return {mode: result['datasets'][DATASET_NAME][mode]['accuracy'] for mode in EVAL_MODES}


def curve_point(step: int, acc: Dict[str, float]) -> Dict:
    """One point of a validation curve: ``{'step', 'speech_acc', 'text_acc'}`` (fractions)."""
    return {'step': step, 'speech_acc': acc['audio'], 'text_acc': acc['text']}


def start_point(setting: Setting, cache_dir: Optional[Path] = None) -> Dict:
    """Step 0 of every arm's validation curve: the stage-2 checkpoint on the first ``curve_items`` validation
    items, evaluated once for all arms and seeds (``<cache>/miniature/eval-curve<N>/``, resumable)."""
    start = stages.stage2(setting, cache_dir)
    out = stages._root(cache_dir) / f'eval-curve{setting.curve_items}'
    return curve_point(0, accuracy(start, setting, out, 'validation', setting.curve_items, cache_dir))


def val_curve(train_dir: Path, setting: Setting, out: Path, cache_dir: Optional[Path] = None,
              engines: Optional[Dict[int, object]] = None) -> List[Dict]:
    """The validation curve of a run: ``start_point`` then, for every saved ``checkpoint-N`` of ``train_dir``
    (one each ``curve_every`` steps), its speech and text accuracy on the first ``curve_items`` validation items
    (results under ``out/checkpoint-N``); ``engines``: {step: an engine already built for that checkpoint}."""
    points = [start_point(setting, cache_dir)]
    for step, checkpoint in checkpoints(train_dir):
        acc = accuracy(checkpoint, setting, out / checkpoint.name, 'validation', setting.curve_items, cache_dir,
                       (engines or {}).get(step))
        points.append(curve_point(step, acc))
    return points


ADVANTAGE_EPS = 1e-6   # an advantage this close to 0 is 0 (a cell's equal rewards minus their float mean)


def allwrong(dump: Path, additive_teacher: bool = False) -> Dict:
    """From a GRPO run's rollout dump (``--dump_rollouts``: one line per rollout per step): over the groups
    (question x step) whose speech rollouts all have accuracy reward 0, the number of groups, of their speech
    rollouts, and the share of those rollouts whose advantage is non-zero (None when there is no such group).
    A non-zero advantage there can only come from a reward other than accuracy (format, or the dense TARS
    rewards): the signal the paper says the dense rewards add when every speech answer is wrong.
    ``additive_teacher`` (opsd): the teacher's log-ratio is added to each token's advantage, so a rollout whose
    dumped ``teacher_gap`` is non-zero counts as well (rlsd's teacher only reweights the dumped advantage)."""
    from trainer import jsonl
    groups: Dict[Tuple[int, str], List[Dict]] = {}
    for line in jsonl.read(dump, missing_ok=False):
        if line.get('modality') == 'speech':
            groups.setdefault((line['step'], line['key']), []).append(line)
    wrong = [rows for rows in groups.values() if all(r.get('tars_accuracy') == 0 for r in rows)]
    rollouts = [r for rows in wrong for r in rows]
    def signal(r: Dict) -> bool:
        if additive_teacher and (r.get('teacher_gap') or 0.0) > ADVANTAGE_EPS:
            return True
        return r.get('advantage') is not None and abs(r['advantage']) > ADVANTAGE_EPS

    nonzero = sum(1 for r in rollouts if signal(r))
    return {'groups': len(wrong), 'speech_rollouts': len(rollouts),
            'nonzero_adv_share': nonzero / len(rollouts) if rollouts else None}


def hearing_accuracy(checkpoint: Path, setting: Setting, cache_dir: Optional[Path] = None) -> Optional[float]:
    """The hearing probe's accuracy (0-1) of an arm's ``checkpoint`` on the first ``arm_hearing_items`` (default
    ``eval_items``) test items (``scripts.miniature.hearing.probe``, its answers cached under
    ``<cache>/miniature/hearing/``)."""
    from scripts.miniature import hearing
    items = setting.arm_hearing_items or setting.eval_items
    return hearing.probe(checkpoint, setting, cache_dir, split='test', max_items=items)['hearing_acc']


def relative(path: Path, cache_dir: Optional[Path] = None) -> str:
    """``path`` relative to the miniature cache root (``<cache>/miniature/``): what metrics.json and the report
    name, so that neither holds a path of the machine that made them."""
    return str(Path(path).resolve().relative_to(stages._root(cache_dir).resolve()))


def cache_path(name: str, cache_dir: Optional[Path] = None) -> Path:
    """The path on this machine of a path metrics.json names (``relative``'s inverse)."""
    return stages._root(cache_dir) / name


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the values that are not None; None when none is."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def curve(logging_jsonl: Path, arm: str) -> List[Dict]:
    """Per optimizer step, from ms-swift's ``logging.jsonl``: the loss, and for the GRPO arms the training
    rollouts' accuracy per modality (``speech/accuracy``, ``text/accuracy``, logged by the TARS trainer) and the
    mean of each reward (``rewards/<name>/mean``); for dpo its logged ``rewards/*`` (chosen, rejected, margins,
    accuracies); sft logs no reward. GRPO points also hold ``rewards_by_modality`` ({speech|text: {name: mean}},
    the TARS trainer's ``<modality>/rewards/<name>``); ``rewards`` is the mean of the two (half of the rollouts are
    speech)."""
    from trainer import jsonl
    from trainer.run_logs import is_attempt_end, log_step
    points: Dict[int, Dict] = {}
    for record in jsonl.read(logging_jsonl, missing_ok=False):
        step = log_step(record)
        if step is None or is_attempt_end(record):
            continue
        by_modality: Dict[str, Dict] = {}
        if arm in ARM_REWARDS:
            by_modality = {m: {name: record.get(f'{m}/rewards/{name}') for name in ARM_REWARDS[arm]}
                           for m in ('speech', 'text')}
            # mixed rollouts are half speech, half text: the mean over all is the mean of the two
            rewards = {name: _mean([by_modality['speech'][name], by_modality['text'][name]])
                       for name in ARM_REWARDS[arm]}
        else:
            rewards = {k: v for k, v in record.items() if k.startswith('rewards/')}
        points[step] = {'step': step, 'speech_acc': record.get('speech/accuracy'),
                        'text_acc': record.get('text/accuracy'), 'loss': record.get('loss'), 'rewards': rewards,
                        'rewards_by_modality': by_modality}
        if arm in TEACHER_ARMS:   # ms-swift's k3 estimate of the KL from the text-reading teacher (a gauge)
            points[step]['teacher_kl'] = record.get('teacher_kl')
    return [points[s] for s in sorted(points)]


def run_dir(arm: str, seed: int, setting: Setting, steps: Optional[int] = None,
            cache_dir: Optional[Path] = None, overrides: Optional[Dict] = None) -> Path:
    """Where ``run_arm`` puts the run (it may not exist yet); runs stage 1 and 2 when missing (the name holds
    the start checkpoint's)."""
    if arm not in ARMS:
        raise ValueError(f'arm must be one of {ARMS}, got {arm!r}')
    start = stages.stage2(setting, cache_dir)
    digest = _digest(start.name, recipe_for(setting, steps, overrides), arm, seed, setting.eval_items,
                     setting.max_new_tokens, setting.curve_every, setting.curve_items, ARMS_VERSION,
                     *([{'hearing_items': setting.arm_hearing_items}] if setting.arm_hearing_items else []))
    return _arms_root(cache_dir) / f'{arm}-s{seed}-{digest}'


TRAINED = 'trained.json'   # in a run's temporary folder once its training has finished


def finished_training(tmp: Path, argv: Sequence[str]) -> Optional[Dict]:
    """``trained.json`` of a killed run's temporary folder (``{train_wall_seconds, argv}``) when its training
    finished with this ``argv`` and left its last checkpoint; None otherwise (no such folder, a killed training,
    a torn file, another argv): the run then starts over."""
    try:
        trained = json.loads((tmp / TRAINED).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(trained, dict) or trained.get('argv') != list(argv) or not checkpoints(tmp / 'train'):
        return None
    return trained


def run_arm(arm: str, seed: int, setting: Setting, steps: Optional[int] = None,
            cache_dir: Optional[Path] = None, overrides: Optional[Dict] = None) -> Path:
    """Train ``arm`` from the stage-2 checkpoint with ``seed`` for ``steps`` optimizer steps (default: the
    setting's STAGE3 recipe), saving the adapter every ``setting.curve_every`` steps; evaluate the last adapter
    with ``eval.qa`` on the first ``setting.eval_items`` test items in the modes audio and text, every saved one on
    the first ``setting.curve_items`` validation items (``val_curve``), and the last one's hearing
    (``hearing_accuracy``); return the run folder ``<cache>/miniature/arms/<arm>-s<seed>-<hash>/``.

    Its ``metrics.json``: ``arm``, ``seed``, ``steps``, ``setting``, ``speech_acc``, ``text_acc``, ``hearing_acc``
    (fractions), ``val_curve`` (``val_curve``), ``allwrong`` (``allwrong`` of the
    rollout dump; None for sft and dpo), ``curve`` (``curve``: the training log, one point per step),
    ``checkpoint`` and ``start_checkpoint`` (relative to ``<cache>/miniature/``), ``recipe``, ``eval_items``,
    ``curve_every``, ``curve_items`` and the wall seconds of each part (``train_wall_seconds``,
    ``eval_wall_seconds``, ``curve_wall_seconds``, ``hearing_wall_seconds``). A finished run is returned at once; a
    killed one resumes from what it finished: a finished training is kept (``trained.json`` in the run's
    temporary folder records it, with its argv and seconds) and the evaluations resume item by item; a killed
    training starts over (the seconds of a resumed evaluation are those of the call that finished it).
    ``overrides`` change recipe entries (``recipe_for``; they are part of the run's name)."""
    recipe = recipe_for(setting, steps, overrides)   # a bad override is refused before any work
    check_curve_steps(setting, recipe['steps'])
    out = run_dir(arm, seed, setting, steps, cache_dir, overrides)
    if (out / 'metrics.json').exists():
        return out
    start = stages.stage2(setting, cache_dir)
    source = arm_data(arm, setting, cache_dir)
    from trainer import jsonl
    tmp = out.with_name(out.name + '.tmp')
    dump = None if arm in PREFERENCE_ARMS else tmp / 'rollouts.jsonl'
    data = tmp / source.name if recipe.get('train_questions') else source   # cycled rows: written below
    argv = arm_argv(arm, start, data, recipe, seed, tmp / 'train', setting.curve_every, dump)
    trained = finished_training(tmp, argv)
    if trained is None:
        shutil.rmtree(tmp, ignore_errors=True)   # a killed attempt that had not finished training: start over
        tmp.mkdir(parents=True)
        if recipe.get('train_questions'):
            per_step = recipe['pref_batch_size'] if arm in PREFERENCE_ARMS else recipe['grpo_questions']
            rows = cycled(jsonl.read(source, missing_ok=False), recipe['train_questions'],
                          recipe['steps'] * per_step)
            jsonl.write_atomic(data, rows)
        (tmp / 'argv.json').write_text(json.dumps(argv, indent=1))
        t0 = time.perf_counter()
        if arm in PREFERENCE_ARMS:
            from trainer import preference_train
            preference_train.main(argv)
        else:
            from trainer import grpo
            grpo.main(argv)
        trained = {'train_wall_seconds': round(time.perf_counter() - t0, 1), 'argv': argv}
        jsonl.write_json_atomic(tmp / TRAINED, trained)
    train_wall = trained['train_wall_seconds']
    checkpoint = last_checkpoint(tmp / 'train')

    t1 = time.perf_counter()
    engine = engine_for(checkpoint, setting)   # one load of the final adapter: its test and its curve point
    acc = accuracy(checkpoint, setting, tmp / 'eval', 'test', setting.eval_items, cache_dir, engine)
    t2 = time.perf_counter()
    points = val_curve(tmp / 'train', setting, tmp / 'curve', cache_dir, {recipe['steps']: engine})
    del engine
    t3 = time.perf_counter()
    hearing = hearing_accuracy(checkpoint, setting, cache_dir)
    t4 = time.perf_counter()

    import torch
    metrics = {'arm': arm, 'seed': seed, 'steps': recipe['steps'], 'setting': setting.name,
               'torch_threads': torch.get_num_threads(),
               'train_wall_seconds': round(train_wall, 1), 'eval_wall_seconds': round(t2 - t1, 1),
               'curve_wall_seconds': round(t3 - t2, 1), 'hearing_wall_seconds': round(t4 - t3, 1),
               'speech_acc': acc['audio'], 'text_acc': acc['text'], 'hearing_acc': hearing,
               'eval_items': setting.eval_items, 'hearing_items': setting.arm_hearing_items or setting.eval_items,
               'curve_every': setting.curve_every,
               'curve_items': setting.curve_items, 'start_checkpoint': relative(start, cache_dir), 'recipe': recipe,
               'checkpoint': relative(out, cache_dir) + '/' + str(checkpoint.relative_to(tmp)),
               'val_curve': points,
               'allwrong': allwrong(dump, arm in ADDITIVE_TEACHER) if dump is not None else None,
               'curve': curve(tmp / 'train' / 'logging.jsonl', arm)}
    print(f'arm {arm} seed {seed}: train {train_wall:.0f} s, test eval {t2 - t1:.0f} s, curve {t3 - t2:.0f} s, '
          f'hearing {t4 - t3:.0f} s')
    (tmp / 'metrics.json').write_text(json.dumps(metrics, indent=1))
    tmp.rename(out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: run (or find) one arm and print its metrics.json."""
    p = argparse.ArgumentParser(description="The miniature's stage 3: one ablation arm from the stage-2 checkpoint.")
    p.add_argument('arm', choices=ARMS)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='the toy QUICK setting (tests)')
    p.add_argument('--steps', type=int, default=None, help="optimizer steps (default: the setting's recipe)")
    p.add_argument('--eval_items', type=int, default=None, help='evaluate the first N test items')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='change one entry of the stage-3 recipe (STAGE3) for a pilot, e.g. --set grpo_questions=4; '
                        'repeatable, part of the run name')
    p.add_argument('--cache_dir', type=Path, default=None)
    a = p.parse_args(argv)
    try:
        overrides = dict(parse_override(text) for text in a.overrides)
        recipe = recipe_for(stages.QUICK if a.quick else stages.FULL, a.steps, overrides)
        check_curve_steps(stages.QUICK if a.quick else stages.FULL, recipe['steps'])
    except ValueError as e:
        p.error(str(e))
    setting = stages.QUICK if a.quick else stages.FULL
    if a.eval_items:
        setting = dataclasses.replace(setting, eval_items=a.eval_items)
    out = run_arm(a.arm, a.seed, setting, a.steps, a.cache_dir, overrides)
    print((out / 'metrics.json').read_text())


if __name__ == '__main__':
    main()
