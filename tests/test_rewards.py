"""The TARS rewards as ms-swift ORMs, with hand-set inputs (trainer/rewards.py)."""
import pytest
import torch

from trainer import config as tars_config
from trainer.rewards import (AccuracyReward, BehaviourAlignmentReward, FormatReward, LengthReward,
                             RepresentationAlignmentReward, register)

S, T = 'speech', 'text'
OPTIONS = ['red', 'green', 'blue', 'black']
GOOD_B = '<think>It is green.</think><answer>The answer is B.</answer>'
GOOD_C = '<think>Blue, I think.</think><answer>The answer is C.</answer>'


def columns(n, keys=None, modalities=None, gold=1):
    return {'tars_key': keys or ['q'] * n, 'tars_modality': modalities or [S, T] * (n // 2),
            'tars_options': [OPTIONS] * n, 'tars_answer_index': [gold] * n}


def test_format_accuracy_and_length_rewards():
    completions = [GOOD_B, '<think>hmm<answer>B. green', 'B']
    assert FormatReward()(completions) == [1.0, 0.5, 0.0]
    assert AccuracyReward()(completions, **columns(3, modalities=[S, S, S])) == [1.0, 1.0, 1.0]
    assert AccuracyReward()([GOOD_C], **columns(1, modalities=[S])) == [0.0]
    assert LengthReward()(['x' * 1024, 'x' * 512]) == [0.0, -0.5]


def test_accuracy_reward_names_the_missing_column():
    with pytest.raises(KeyError, match='tars_options'):
        AccuracyReward()([GOOD_B])


def test_representation_reward_pairs_speech_with_correct_text_of_the_same_question():
    e1, e2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    hidden = [e1, e1, e2, e2]  # speech 0 ~ text 1 (identical); speech 2 vs text 3 identical too
    completions = [GOOD_C, GOOD_B, GOOD_C, GOOD_C]  # only text 1 is correct
    out = RepresentationAlignmentReward()(completions, tars_hidden=hidden, **columns(4))
    # both speech rollouts pair with text 1: cos(e1, e1) = 1; cos(e2, e1) = mean(0, 1) = 0.5
    assert out == pytest.approx([1.0, 0.75, 0.5, 0.75])


def test_representation_reward_layer_subset_and_no_correct_text():
    reward = RepresentationAlignmentReward(config=tars_config.TARSConfig(target_layers='1'))
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert reward([GOOD_C, GOOD_B], tars_hidden=[a, b], **columns(2)) == pytest.approx([1.0, 1.0])
    # all layers (the default config): layer 2 is orthogonal -> mean(1, 0)
    assert RepresentationAlignmentReward()([GOOD_C, GOOD_B], tars_hidden=[a, b], **columns(2)) == \
        pytest.approx([0.5, 0.5])
    assert reward([GOOD_C, GOOD_C], tars_hidden=[a, b], **columns(2)) == [0.0, 0.0]


def test_tars_flags_parse_into_the_config_and_leave_ms_swift_flags_in_order():
    config, rest = tars_config.parse_args(['--target_layers', '11-20', '--lora_rank', '8', '--prompt_modality', 'a',
                                           '--target_modules', 'all-linear', '--length_target', '512'])
    assert config == tars_config.TARSConfig(prompt_modality='a', target_layers='11-20', length_target=512)
    assert config.layers == list(range(11, 21))
    assert rest == ['--lora_rank', '8', '--target_modules', 'all-linear']


BAD_CONFIGS = [  # field, value from Python, value on the command line (None: no command-line form), error
    ('prompt_modality', 'speech', 'speech', "prompt_modality must be one of a, t, mixed, not 'speech'"),
    ('target_layers', 'first', 'first',
     'target_layers must be "all", a range like "1-10" or a list like "31,32" (1-based layer numbers), '
     "not 'first'"),
    ('target_layers', '0-3', '0-3', 'target_layers must be "all", a range like "1-10" or a list like "31,32" '
     "(1-based layer numbers), not '0-3' (layer 0 is the embeddings)"),
    ('target_layers', [31, 32], None, 'target_layers must be "all", a range like "1-10" or a list like "31,32" '
     '(1-based layer numbers) as one string, not [31, 32]'),
    ('embedder', ' ', ' ', "embedder must be minilm, a local path or a model id, not ' '"),
    ('dump_rollouts', '', '', "dump_rollouts must be a file path, not ''"),
    ('advantage_norm', 'batch', 'batch', "advantage_norm must be one of modality, group, not 'batch'"),
    ('length_target', 0, '0', 'length_target must be a positive number of characters, not 0'),
]


@pytest.mark.parametrize('field,value,flag,error', BAD_CONFIGS, ids=[f'{b[0]}={b[1]!r}' for b in BAD_CONFIGS])
def test_every_config_field_refuses_bad_values_the_same_way_from_python_and_the_command_line(
        field, value, flag, error):
    with pytest.raises(ValueError) as python:
        tars_config.TARSConfig(**{field: value})
    assert str(python.value) == error
    if flag is not None:
        with pytest.raises(ValueError) as command_line:
            tars_config.parse_args([f'--{field}', flag, '--lora_rank', '8'])
        assert str(command_line.value) == error


@pytest.mark.slow  # the slow tier (tests/conftest.py): loads the sentence embedder
def test_behaviour_reward_embedding_cosine_round_robin_and_text_mean():
    speech_same = GOOD_B
    speech_other = '<think>Quarterly revenue grew by ten percent.</think><answer>The answer is A.</answer>'
    completions = [speech_same, GOOD_B, speech_other, GOOD_C]  # text 1 correct, text 3 wrong
    out = BehaviourAlignmentReward()(completions, **columns(4))
    assert out[0] == pytest.approx(1.0, abs=1e-5)  # identical text -> cosine 1
    assert -1.0 <= out[2] < 0.95  # a different sentence is less similar
    assert out[1] == pytest.approx((out[0] + out[2]) / 2) and out[3] == out[1]


def test_behaviour_reward_is_zero_without_a_correct_text_rollout():
    out = BehaviourAlignmentReward()([GOOD_B, GOOD_C], **columns(2))
    assert out == [0.0, 0.0]


def test_registration_under_both_naming_schemes():
    from swift.rewards import orms
    register()
    assert orms['tars_representation'] is RepresentationAlignmentReward
    assert orms['hsorm.hidden_state_sim'] is RepresentationAlignmentReward
    assert orms['reward_xfinder'] is AccuracyReward


def test_the_entry_point_stops_on_a_bad_option_with_its_one_line():
    from trainer.grpo import main
    with pytest.raises(SystemExit) as stop:
        main(['--target_layers', '0-3', '--model', 'unused'])
    assert str(stop.value) == ('trainer.grpo: target_layers must be "all", a range like "1-10" or a list like '
                               '"31,32" (1-based layer numbers), not \'0-3\' (layer 0 is the embeddings)')
