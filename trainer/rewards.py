"""TARS rewards as ms-swift ORMs (docs/original.md §3), each usable alone with any GRPO trainer that
provides its inputs.

Rewards receive ms-swift's completions plus the dataset's ``tars_*`` columns (``trainer.data``) and
``tars_modality`` (speech | text), which the TARS trainer adds to each row. Under the TARS trainer a
reward also gets the step's judged rollout view and the run's TARS options through one interface,
``TARSReward.given`` (the view carries each rollout's pooled [L, D] state for the representation
reward). With any other GRPO trainer a reward builds its own view from the columns (the representation
reward then needs a ``tars_hidden`` column) and uses the options it was built with. The alignment rewards
gather their inputs over all ranks and pair rollouts by question key (``trainer.tars_math``), so they
stay right whatever the batch geometry.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch

from swift.rewards import ORM

from trainer import config as tars_config
from trainer import tars_math
from trainer.answer import format_score, is_correct, length_score
from trainer.data import ANSWER_INDEX, KEY, OPTIONS
from trainer.embedder import embed
from trainer.rollouts import Rollout, RolloutBatch, judge_all

MODALITY, HIDDEN = 'tars_modality', 'tars_hidden'


def _require(kwargs: dict, name: str, reward: str) -> list:
    if kwargs.get(name) is None:
        raise KeyError(f'reward {reward} needs the column {name!r}; prepare the data with trainer.data and '
                       'train with the TARS trainer (python -m trainer.grpo)')
    return kwargs[name]


def correctness(completions: Sequence[str], options: Sequence[Sequence[str]],
                answer_index: Sequence[int]) -> List[bool]:
    """Whether each completion picks the gold option (rule-based extraction; the one judge rewards share)."""
    return judge_all(completions, options, answer_index, is_correct)


class TARSReward(ORM):
    """A TARS reward. ms-swift builds it with its arguments (``args``); ``config`` defaults to the run's TARS
    options (``trainer.config.active()``).

    Its inputs for one generation batch come through ``given`` (the TARS trainer): the judged, gathered
    rollout view and the TARS options. Outside ``given`` (any other GRPO trainer, a test) it builds its own
    view from ms-swift's reward inputs and uses the options it was built with.
    """
    name = 'tars'

    def __init__(self, args: Any = None, config: Optional[tars_config.TARSConfig] = None, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self._config = config if config is not None else tars_config.active()
        self._rollouts: Optional[RolloutBatch] = None

    @property
    def config(self) -> tars_config.TARSConfig:
        """The TARS options of the current call."""
        return self._config

    @contextmanager
    def given(self, rollouts: RolloutBatch, config: tars_config.TARSConfig) -> Iterator[None]:
        """The one way a trainer hands this reward its inputs: calls in this block read ``rollouts`` (when
        they score exactly its local completions) and ``config``; both are dropped when the block ends."""
        saved = self._rollouts, self._config
        self._rollouts, self._config = rollouts, config
        try:
            yield
        finally:
            self._rollouts, self._config = saved

    def view(self, completions: Sequence[str], kwargs: dict, gather: bool = True) -> RolloutBatch:
        """The judged rollouts of this batch: the given ones (``given``) when they are these completions,
        else built from the ms-swift columns in ``kwargs`` (gathered over ranks with ``gather``)."""
        if self._given_for(completions):
            return self._rollouts
        options = _require(kwargs, OPTIONS, self.name)
        gold = _require(kwargs, ANSWER_INDEX, self.name)
        keys = kwargs.get(KEY) or [''] * len(completions)
        modalities = kwargs.get(MODALITY) or [tars_math.SPEECH] * len(completions)
        hidden = kwargs.get(HIDDEN) or [None] * len(completions)
        correct = correctness(completions, options, gold)
        local = [Rollout(key=k, modality=m, completion=c, options=list(o), gold=int(g), correct=ok, length=0,
                         hidden=None if h is None else h.detach().float().cpu())
                 for k, m, c, o, g, ok, h in zip(keys, modalities, completions, options, gold, correct, hidden,
                                                 strict=True)]
        return RolloutBatch.gather(local) if gather else RolloutBatch(rows=local, offset=0, n_local=len(local))

    def _given_for(self, completions: Sequence[str]) -> bool:
        """Whether a given view holds exactly these completions (the guard against a stale view)."""
        return self._rollouts is not None and self._rollouts.matches(completions)


class FormatReward(ORM):
    """reward_format (docs/original.md §3.1): 1 strict systhink format, 0.5 loose, 0 otherwise."""

    def __call__(self, completions: List[str], **kwargs: Any) -> List[float]:
        return [format_score(c) for c in completions]


class AccuracyReward(TARSReward):
    """Accuracy (docs/original.md §3.3, the original's reward_xfinder): 1 if the extracted choice is the gold one."""
    name = 'accuracy'

    def __call__(self, completions: List[str], **kwargs: Any) -> List[float]:
        view = self.view(completions, kwargs, gather=False)
        return [float(ok) for ok in view.local(view.correct)]


class LengthReward(TARSReward):
    """reward_len (docs/original.md §3.2): -|target - characters| / target."""

    def __call__(self, completions: List[str], **kwargs: Any) -> List[float]:
        target = self.config.length_target
        return [length_score(c, target) for c in completions]


class _AlignmentReward(TARSReward):
    """Shared pairing for the two alignment rewards: speech rollouts are scored against a correct text
    rollout of the same question (round robin); text rollouts get their question's mean speech score."""
    name = 'alignment'

    def __call__(self, completions: List[str], **kwargs: Any) -> List[float]:
        _require(kwargs, KEY, self.name)
        _require(kwargs, MODALITY, self.name)
        view = self.view(completions, kwargs)
        partners = tars_math.pair_with_correct_text(view.keys, view.modalities, view.correct)
        rewards = tars_math.alignment_rewards(view.keys, view.modalities, partners, self.scorer(view.rows, partners))
        return view.local(rewards)

    def scorer(self, rows: List[Rollout], partners: List[Optional[int]]) -> Callable[[int, int], float]:
        """``score(i, j)``: the alignment of rollout ``i`` with its partner ``j`` (indices into ``rows``)."""
        raise NotImplementedError


class RepresentationAlignmentReward(_AlignmentReward):
    """hidden_state_sim (docs/original.md §3.5): mean over target layers of the cosine between the mean-pooled
    completion states of a speech rollout and of its paired correct text rollout."""
    name = 'representation alignment'

    def __call__(self, completions: List[str], **kwargs: Any) -> List[float]:
        if not self._given_for(completions):
            _require(kwargs, HIDDEN, self.name)
        return super().__call__(completions, **kwargs)

    def scorer(self, rows: List[Rollout], partners: List[Optional[int]]) -> Callable[[int, int], float]:
        """Cosine of the pooled hidden states of rollouts ``i`` and ``j``, averaged over the target layers."""
        layers = self.config.layers
        return lambda i, j: tars_math.pooled_cosine(rows[i].hidden, rows[j].hidden, layers)


class BehaviourAlignmentReward(_AlignmentReward):
    """reward_align_audio_to_text (docs/original.md §3.4): cosine of the sentence embeddings of a speech
    completion and of its paired correct text completion."""
    name = 'behaviour alignment'

    def scorer(self, rows: List[Rollout], partners: List[Optional[int]]) -> Callable[[int, int], float]:
        """Cosine of the sentence embeddings of rollouts ``i`` and ``j`` (each paired rollout embedded once)."""
        needed = sorted({i for i, j in enumerate(partners) if j is not None} | {j for j in partners if j is not None})
        if not needed:
            return lambda i, j: 0.0
        vectors = embed(self.config.embedder, [rows[i].completion for i in needed])
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
