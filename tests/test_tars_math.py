"""Hand-computed checks of the TARS math (trainer/tars_math.py, trainer/hidden_states.py)."""
import math

import pytest
import torch

from trainer import tars_math as tm
from trainer.hidden_states import completion_token_mask

S, T = tm.SPEECH, tm.TEXT


def test_mixed_modalities_alternate_per_question_whatever_the_order():
    assert tm.assign_modalities(['q1'] * 4 + ['q2'] * 4, 'mixed') == [S, T, S, T, S, T, S, T]
    assert tm.assign_modalities(['a', 'b', 'a', 'b', 'a', 'a'], 'mixed') == [S, S, T, T, S, T]
    assert tm.assign_modalities(['a', 'a'], 'a') == [S, S]
    assert tm.assign_modalities(['a', 'a'], 't') == [T, T]
    with pytest.raises(ValueError):
        tm.assign_modalities(['a'], 'speech')


def test_advantages_use_the_mean_of_the_same_question_and_modality():
    rewards = torch.tensor([1.0, 0.0, 3.0, 2.0])
    speech = torch.tensor([True, False, True, False])
    adv = tm.modality_advantages(rewards, torch.zeros(4, dtype=torch.long), speech)
    # speech mean (1+3)/2 = 2 -> -1, +1; text mean (0+2)/2 = 1 -> -1, +1
    assert adv.tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert adv.dtype == torch.float32


def test_advantages_of_two_questions_are_independent():
    rewards = torch.tensor([1.0, 5.0, 3.0, 9.0])
    groups = torch.tensor([0, 1, 0, 1])
    speech = torch.tensor([True, True, True, True])
    assert tm.modality_advantages(rewards, groups, speech).tolist() == [-1.0, -2.0, 1.0, 2.0]


def test_equal_rewards_give_zero_advantages():
    adv = tm.modality_advantages(torch.full((6,), 0.7), torch.zeros(6, dtype=torch.long),
                                 torch.tensor([True, False] * 3))
    assert torch.allclose(adv, torch.zeros(6), atol=1e-7)


def test_nan_reward_gets_zero_advantage_and_stays_out_of_the_baseline():
    rewards = torch.tensor([1.0, float('nan'), 3.0, 2.0])
    speech = torch.tensor([True, True, True, False])
    adv = tm.modality_advantages(rewards, torch.zeros(4, dtype=torch.long), speech)
    # speech baseline over {1, 3} = 2; the lone text rollout is its own baseline
    assert adv.tolist() == [-1.0, 0.0, 1.0, 0.0]


def test_std_scaling_divides_by_the_modality_population_std():
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.0])
    speech = torch.tensor([True, False, True, False])
    adv = tm.modality_advantages(rewards, torch.zeros(4, dtype=torch.long), speech, scale_std=True)
    # speech: mean 2, population std 1 -> (+-1) / (1 + 1e-4); text: std 0 -> 0 / 1e-4 = 0
    assert adv[0].item() == pytest.approx(-1 / 1.0001)
    assert adv[2].item() == pytest.approx(1 / 1.0001)
    assert adv[1].item() == 0.0 and adv[3].item() == 0.0


def test_advantage_norm_modality_versus_one_group_baseline():
    """The same rewards under both advantage_norm settings, by hand. Question 0: speech 0, 2 and text 4, 6;
    question 1: speech 1, text 3 (a different question never shares a baseline)."""
    rewards = torch.tensor([0.0, 4.0, 2.0, 6.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    speech = torch.tensor([True, False, True, False, True, False])
    # per modality: speech mean 1 -> -1, +1; text mean 5 -> -1, +1; question 1: each cell alone -> 0
    assert tm.modality_advantages(rewards, groups, speech).tolist() == [-1.0, -1.0, 1.0, 1.0, 0.0, 0.0]
    # one group: question 0 mean 3 -> -3, 1, -1, 3; question 1 mean 2 -> -1, 1
    assert tm.modality_advantages(rewards, groups, speech, norm='group').tolist() == [-3.0, 1.0, -1.0, 3.0,
                                                                                      -1.0, 1.0]
    # with std scaling: question 0's population std is sqrt(5), question 1's is 1
    scaled = tm.modality_advantages(rewards, groups, speech, scale_std=True, norm='group')
    assert scaled.tolist() == pytest.approx([-3 / (5 ** 0.5 + 1e-4), 1 / (5 ** 0.5 + 1e-4), -1 / (5 ** 0.5 + 1e-4),
                                             3 / (5 ** 0.5 + 1e-4), -1 / 1.0001, 1 / 1.0001])
    assert tm.advantage_cells(groups, speech, 'modality').tolist() == [1, 0, 1, 0, 3, 2]
    assert tm.advantage_cells(groups, speech, 'group').tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match='advantage_norm'):
        tm.advantage_cells(groups, speech, 'batch')


def test_advantage_norm_flag_is_parsed_and_checked():
    from trainer import config
    tars, rest = config.parse_args(['--advantage_norm', 'group', '--learning_rate', '1e-4'])
    assert tars.advantage_norm == 'group' and rest == ['--learning_rate', '1e-4']
    assert config.TARSConfig().advantage_norm == 'modality'
    with pytest.raises(ValueError, match='advantage_norm'):
        config.TARSConfig(advantage_norm='batch')


def test_total_reward_weights_and_propagates_nan():
    per_func = torch.tensor([[1.0, 0.5], [1.0, float('nan')]])
    total = tm.total_reward(per_func, torch.tensor([1.0, 2.0]))
    assert total[0].item() == 2.0
    assert math.isnan(total[1].item())


def test_pooled_cosine_identical_orthogonal_and_layer_subsets():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert tm.pooled_cosine(a, a) == pytest.approx(1.0)
    assert tm.pooled_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])) == pytest.approx(0.0)
    assert tm.pooled_cosine(a, b) == pytest.approx(0.5)  # layer 1: 1, layer 2: 0
    assert tm.pooled_cosine(a, b, [1]) == pytest.approx(1.0)
    assert tm.pooled_cosine(a, b, [2]) == pytest.approx(0.0)
    # a known rotation by 60 degrees gives cos 60 = 0.5
    rot = torch.tensor([[0.5, math.sqrt(3) / 2]])
    assert tm.pooled_cosine(torch.tensor([[1.0, 0.0]]), rot) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        tm.pooled_cosine(a, b, [3])


def test_mean_pool_covers_only_masked_tokens():
    hidden = torch.tensor([[[1.0], [3.0], [5.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    pooled = tm.masked_mean_pool(hidden, mask)
    assert pooled.shape == (2, 1)
    assert pooled[0, 0].item() == 4.0
    assert math.isnan(pooled[1, 0].item())  # an empty completion has no state


def test_completion_token_mask_drops_a_final_end_token_only():
    input_ids = torch.tensor([[5, 5, 5, 7, 8, 99], [5, 5, 5, 7, 8, 0], [5, 5, 5, 7, 8, 9]])
    completion = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    mask = completion_token_mask(input_ids, completion, end_token_ids=[99])
    # row 0 ends with the end token 99: dropped; row 1's completion is 2 tokens (padding after);
    # row 2 was truncated (no end token): all its tokens are kept
    assert mask.tolist() == [[False, False, False, True, True, False],
                             [False, False, False, True, True, False],
                             [False, False, False, True, True, True]]


def test_completion_token_mask_never_pools_a_template_suffix():
    # a truncated completion 7 8 that the template closed with 99 (end of turn) and 10 (newline): the
    # completion ends at the end token whether or not the generated count is given
    input_ids = torch.tensor([[5, 7, 8, 99, 10], [5, 7, 8, 99, 10]])
    completion = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]])
    expected = [[False, True, True, False, False]] * 2
    assert completion_token_mask(input_ids, completion, [99]).tolist() == expected
    assert completion_token_mask(input_ids, completion, [99], [2, None]).tolist() == expected
    # a suffix without an end token (10 10) is cut by the generated count only
    plain = torch.tensor([[5, 7, 8, 10, 10]])
    assert completion_token_mask(plain, completion[:1], [99], [2]).tolist() == [[False, True, True, False, False]]
    with pytest.raises(ValueError, match='1 generated lengths for a batch of 2'):
        completion_token_mask(input_ids, completion, [99], [2])


def test_round_robin_pairing_with_correct_text_of_the_same_question():
    keys = ['q'] * 8 + ['r'] * 2
    mods = [S, T] * 5
    correct = [False, True, False, False, False, True, False, False, False, False]
    partners = tm.pair_with_correct_text(keys, mods, correct)
    # q: correct texts at 1 and 5 -> speech 0, 2, 4, 6 pair with 1, 5, 1, 5; r has no correct text
    assert partners == [1, None, 5, None, 1, None, 5, None, None, None]


def test_alignment_rewards_speech_scores_text_means_and_zero_without_partner():
    keys = ['q', 'q', 'q', 'q', 'r', 'r']
    mods = [S, T, S, T, S, T]
    partners = [1, None, 3, None, None, None]
    scores = {(0, 1): 0.2, (2, 3): 0.6}
    out = tm.alignment_rewards(keys, mods, partners, lambda i, j: scores[(i, j)])
    assert out == pytest.approx([0.2, 0.4, 0.6, 0.4, 0.0, 0.0])


def test_alignment_rewards_text_mean_ignores_nan_speech_scores():
    out = tm.alignment_rewards(['q'] * 3, [S, S, T], [2, 2, None], lambda i, j: float('nan') if i == 0 else 0.8)
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.8) and out[2] == pytest.approx(0.8)


def test_group_ids_equal_for_equal_keys():
    assert tm.group_ids(['b', 'a', 'b', 'c']).tolist() == [0, 1, 0, 2]
