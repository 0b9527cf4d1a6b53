"""One rollout view per generation batch (trainer.rollouts): every reward, the advantages and the metrics read
the same judged, gathered rows, and each rollout is judged exactly once per step."""
from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import PYTHON, run
from trainer import rewards as R
from trainer.config import TARSConfig
from trainer import tars_math as tm
from trainer.rollouts import Rollout, RolloutBatch

OPTIONS = ['red', 'green', 'blue', 'black']
GOOD, BAD = '<think>x</think><answer>The answer is B.</answer>', '<answer>The answer is D.</answer>'


def _batch():
    # one question, speech/text alternating; text rollouts 1 (correct) and 3 (wrong)
    completions = [GOOD, GOOD, BAD, BAD]
    modalities = [tm.SPEECH, tm.TEXT, tm.SPEECH, tm.TEXT]
    hidden = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
              torch.tensor([[1.0, 1.0]])]
    rows = [Rollout(key='q', modality=m, completion=c, options=OPTIONS, gold=1, correct=c == GOOD, length=5, hidden=h)
            for c, m, h in zip(completions, modalities, hidden, strict=True)]
    kwargs = {R.KEY: ['q'] * 4, R.MODALITY: modalities, R.OPTIONS: [OPTIONS] * 4, R.ANSWER_INDEX: [1] * 4,
              R.HIDDEN: hidden}
    return completions, RolloutBatch(rows=rows, offset=0, n_local=4), kwargs


@pytest.fixture
def judged(monkeypatch):
    calls = []
    original = R.is_correct

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)
    monkeypatch.setattr(R, 'is_correct', counting)
    return calls


def test_rewards_given_the_view_never_judge_again_and_equal_the_standalone_rewards(judged):
    completions, view, kwargs = _batch()
    rewards = [R.AccuracyReward(), R.RepresentationAlignmentReward()]
    standalone = [f(completions, **kwargs) for f in rewards]
    assert len(judged) == 2 * 4  # standalone: each reward judges every rollout itself
    judged.clear()
    with_view = []
    for f in rewards:
        with f.given(view, TARSConfig()):
            with_view.append(f(completions, **kwargs))
    assert judged == []
    assert with_view == standalone
    # hand-computed: accuracy 1,1,0,0; speech 0 pairs with text 1 (cos 1), speech 2 too (cos 0);
    # text rollouts get the mean speech score 0.5
    assert with_view[0] == [1.0, 1.0, 0.0, 0.0]
    assert with_view[1] == pytest.approx([1.0, 0.5, 0.0, 0.5])


def test_a_stale_view_is_not_used(judged):
    completions, view, kwargs = _batch()
    f = R.AccuracyReward()
    other = [BAD, GOOD, GOOD, BAD]
    with f.given(view, TARSConfig()):
        assert f(other, **kwargs) == [0.0, 1.0, 1.0, 0.0]
    assert len(judged) == 4


def test_given_options_hold_for_the_block_only():
    completions, view, kwargs = _batch()
    f = R.LengthReward(config=TARSConfig(length_target=10))
    assert f(['x' * 5]) == [-0.5]
    with f.given(view, TARSConfig(length_target=5)):
        assert f(['x' * 5]) == [0.0]
        assert f.view(completions, kwargs) is view
    assert f(['x' * 5]) == [-0.5]
    assert f.view(completions, kwargs, gather=False) is not view


def test_each_rollout_is_judged_once_per_step_in_a_real_run(tiny_model, grpo_jsonl, tmp_path):
    """Two GRPO steps of 8 rollouts with the accuracy and both alignment rewards: 16 verdicts in all (before
    the view, the accuracy reward, each alignment reward and the advantages judged each rollout again)."""
    from tests.test_grpo_integration import grpo_args, read_dump
    script = ('import sys, trainer.rewards as r\n'
              'calls = [0]\n'
              'judge = r.is_correct\n'
              'def counting(*a, **k):\n'
              '    calls[0] += 1\n'
              '    return judge(*a, **k)\n'
              'r.is_correct = counting\n'
              'from trainer.grpo import main\n'
              'main(sys.argv[1:])\n'
              'print("JUDGED", calls[0])\n')
    out = tmp_path / 'count'
    proc = run([PYTHON, '-c', script, *grpo_args(tiny_model, grpo_jsonl, out, steps=2)])
    assert int(re.findall(r'^JUDGED (\d+)$', proc.stdout, re.M)[-1]) == 16
    rows = read_dump(out / 'rollouts.jsonl')
    assert len(rows) == 16 and all(r['tars_accuracy'] in (0.0, 1.0) for r in rows)
