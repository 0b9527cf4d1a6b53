"""The teacher arms of the miniature's stage 3 (opsd, rlsd): the text-only teacher view of the TARS trainer's
samples, the arms' flags and rows (fast: no model)."""
from __future__ import annotations

from pathlib import Path

SYSTEM = {'role': 'system', 'content': 'Think, then answer.'}


def _row(**extra):
    return {'messages': [SYSTEM, {'role': 'user', 'content': '<audio>'}], 'audios': ['/clips/q1.wav'],
            'tars_key': 'q1', **extra}


def test_the_teacher_view_reads_the_text_prompt_without_the_audio():
    from trainer.grpo_trainer import TARSGRPOTrainer, TextTeacherSample
    assert TARSGRPOTrainer.sample_cls is TextTeacherSample   # ms-swift builds the rows' samples from it
    sample = TextTeacherSample.from_row(_row(teacher_prompt='Eve has 7 hats. Who has more?\n\nOption A: Eve'))
    assert sample.teacher_prompt.startswith('Eve has 7 hats') and sample.extra == {'tars_key': 'q1'}
    assert sample.build_teacher_view()
    teacher = sample.to_teacher_template_dict()
    assert 'audios' not in teacher
    text = 'Eve has 7 hats. Who has more?\n\nOption A: Eve'
    assert teacher['messages'] == [SYSTEM, {'role': 'user', 'content': text}]
    # the student keeps its speech prompt and its clip
    student = sample.to_template_dict()
    assert student['audios'] == ['/clips/q1.wav'] and student['messages'][-1]['content'] == '<audio>'
    # without a teacher prompt ms-swift's view is unchanged (no self-distillation)
    plain = TextTeacherSample.from_row(_row())
    assert not plain.build_teacher_view()


def test_teacher_arms_flags():
    from scripts.miniature import arms, stages
    assert arms.ARMS[-2:] == ('opsd', 'rlsd') and arms.TEACHER_ARMS == ('opsd', 'rlsd')
    recipe = arms.recipe_for(stages.FULL)

    def argv(arm):
        return arms.arm_argv(arm, Path('start'), Path('d.jsonl'), recipe, 2, Path('out'), 10, Path('r.jsonl'))

    opsd, rlsd, grpo = argv('opsd'), argv('rlsd'), argv('grpo')
    assert opsd[opsd.index('--prompt_modality') + 1] == 'a'
    assert opsd[opsd.index('--reward_weights') + 1:opsd.index('--reward_weights') + 3] == ['0', '0']
    assert opsd[opsd.index('--teacher_kl_coef') + 1] == '1.0'
    assert rlsd[rlsd.index('--advantage_reweight') + 1] == 'rlsd'
    assert rlsd[rlsd.index('--prompt_modality') + 1] == 'mixed'
    # equal steps, rollouts, LoRA, rate and seeds: the argv differ only in the teacher flags and the modality
    for a in (opsd, rlsd):
        for flag in ('--max_steps', '--seed', '--data_seed', '--num_generations', '--per_device_train_batch_size',
                     '--learning_rate', '--lora_rank', '--max_completion_length', '--temperature'):
            assert a[a.index(flag) + 1] == grpo[grpo.index(flag) + 1], flag
    assert [x for x in rlsd if x not in ('--advantage_reweight', 'rlsd')] == grpo
