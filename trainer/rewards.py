"""TARS rewards as ms-swift ORMs (reference section 3), each usable alone with any GRPO trainer that
provides its inputs.

Rewards receive ms-swift's completions plus the dataset's ``tars_*`` columns (``trainer.data``) and
the per-rollout fields the TARS trainer adds: ``tars_modality`` (speech | text) and, for the
representation reward, ``tars_hidden`` (a pooled [L, D] state per rollout). The alignment rewards
gather their inputs over all ranks and pair rollouts by question key (``trainer.tars_math``), so they
stay right whatever the batch geometry.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from swift.rewards import ORM

from trainer import config as tars_config
from trainer import tars_math
from trainer.answer import format_score, is_correct, length_score
from trainer.data import ANSWER_INDEX, KEY, OPTIONS
from trainer.distributed import gather_lists

MODALITY, HIDDEN = 'tars_modality', 'tars_hidden'


def _require(kwargs: dict, name: str, reward: str) -> list:
    if kwargs.get(name) is None:
        raise KeyError(f'reward {reward} needs the column {name!r}; prepare the data with trainer.data and '
                       'train with the TARS trainer (python -m trainer.grpo)')
    return kwargs[name]


def correctness(completions: Sequence[str], options: Sequence[Sequence[str]],
                answer_index: Sequence[int]) -> List[bool]:
    """Whether each completion picks the gold option (rule-based extraction; the one judge rewards share)."""
    return [is_correct(c, o, int(a)) for c, o, a in zip(completions, options, answer_index)]


class FormatReward(ORM):
    """reward_format (reference 3.1): 1 strict systhink format, 0.5 loose, 0 otherwise."""

    def __call__(self, completions, **kwargs) -> List[float]:
        return [format_score(c) for c in completions]


class AccuracyReward(ORM):
    """Accuracy (reference 3.3, the original's reward_xfinder): 1 if the extracted choice is the gold one."""

    def __call__(self, completions, **kwargs) -> List[float]:
        options = _require(kwargs, OPTIONS, 'accuracy')
        gold = _require(kwargs, ANSWER_INDEX, 'accuracy')
        return [float(ok) for ok in correctness(completions, options, gold)]


class LengthReward(ORM):
    """reward_len (reference 3.2): -|target - characters| / target."""

    def __call__(self, completions, **kwargs) -> List[float]:
        target = tars_config.active().length_target
        return [length_score(c, target) for c in completions]


class _AlignmentReward(ORM):
    """Shared pairing for the two alignment rewards: speech rollouts are scored against a correct text
    rollout of the same question (round robin); text rollouts get their question's mean speech score."""
    name = 'alignment'

    def inputs(self, completions, kwargs) -> dict:
        return {
            'completion': list(completions),
            'key': _require(kwargs, KEY, self.name),
            'modality': _require(kwargs, MODALITY, self.name),
            'options': _require(kwargs, OPTIONS, self.name),
            'gold': _require(kwargs, ANSWER_INDEX, self.name),
        }

    def __call__(self, completions, **kwargs) -> List[float]:
        local = self.inputs(completions, kwargs)
        n_local = len(completions)
        rows, offset = gather_lists([dict(zip(local, values)) for values in zip(*local.values())])
        keys = [r['key'] for r in rows]
        modalities = [r['modality'] for r in rows]
        correct = correctness([r['completion'] for r in rows], [r['options'] for r in rows],
                              [r['gold'] for r in rows])
        partners = tars_math.pair_with_correct_text(keys, modalities, correct)
        score = self.scorer(rows, partners)
        rewards = tars_math.alignment_rewards(keys, modalities, partners, score)
        return rewards[offset:offset + n_local]

    def scorer(self, rows: List[dict], partners: List[Optional[int]]):
        raise NotImplementedError


class RepresentationAlignmentReward(_AlignmentReward):
    """hidden_state_sim (reference 3.5): mean over target layers of the cosine between the mean-pooled
    completion states of a speech rollout and of its paired correct text rollout."""
    name = 'representation alignment'

    def inputs(self, completions, kwargs) -> dict:
        out = super().inputs(completions, kwargs)
        out['hidden'] = [h.detach().float().cpu() for h in _require(kwargs, HIDDEN, self.name)]
        return out

    def scorer(self, rows, partners):
        layers = tars_config.active().target_layers
        return lambda i, j: tars_math.pooled_cosine(rows[i]['hidden'], rows[j]['hidden'], layers)


class BehaviourAlignmentReward(_AlignmentReward):
    """reward_align_audio_to_text (reference 3.4): cosine of the sentence embeddings of a speech
    completion and of its paired correct text completion."""
    name = 'behaviour alignment'

    def scorer(self, rows, partners):
        from trainer.embedder import embed
        needed = sorted({i for i, j in enumerate(partners) if j is not None} | {j for j in partners if j is not None})
        if not needed:
            return lambda i, j: 0.0
        vectors = embed(tars_config.active().embedder, [rows[i]['completion'] for i in needed])
        where = {i: n for n, i in enumerate(needed)}
        return lambda i, j: float(torch.dot(vectors[where[i]], vectors[where[j]]))


# ms-swift registry names: ours, and the original's names so REWARD_FUNCS from its scripts work as is.
REWARDS = {
    'tars_format': FormatReward,
    'tars_accuracy': AccuracyReward,
    'tars_length': LengthReward,
    'tars_representation': RepresentationAlignmentReward,
    'tars_behaviour': BehaviourAlignmentReward,
}
ORIGINAL_NAMES = {
    'reward_format': 'tars_format',
    'reward_xfinder': 'tars_accuracy',
    'reward_len': 'tars_length',
    'hsorm.hidden_state_sim': 'tars_representation',
    'reward_align_audio_to_text': 'tars_behaviour',
}
NEEDS_HIDDEN_STATES = (RepresentationAlignmentReward, )


def register() -> None:
    """Add the TARS rewards to ms-swift's ``orms`` registry (under both naming schemes)."""
    from swift.rewards import orms
    orms.update(REWARDS)
    orms.update({old: REWARDS[new] for old, new in ORIGINAL_NAMES.items()})
