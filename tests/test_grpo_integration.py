"""TARS GRPO on the tiny Qwen2.5-Omni, CPU: real ms-swift runs with audio and all TARS rewards.

Each run is a subprocess of ``python -m trainer.grpo`` (or torchrun / DeepSpeed around it), as the
launcher runs it. The length reward is added so that a random model still gets non-zero advantages
(the format and accuracy rewards of an untrained model are all zero).
"""
import json
from collections import defaultdict
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import PYTHON, run

pytestmark = pytest.mark.slow  # every test here trains (tests/conftest.py: tiers)

REWARDS = ['tars_format', 'tars_accuracy', 'tars_representation', 'tars_behaviour', 'tars_length']


def grpo_args(model, data, out, *extra, steps=2, batch=8):
    return ['--model', str(model), '--model_type', 'qwen2_5_omni', '--dataset', str(data),
            '--reward_funcs', *REWARDS, '--torch_dtype', 'float32', '--fp16', 'false', '--bf16', 'false',
            '--use_vllm', 'false', '--num_generations', '4', '--max_completion_length', '12',
            '--per_device_train_batch_size', str(batch), '--gradient_accumulation_steps', '1',
            '--max_steps', str(steps), '--logging_steps', '1', '--save_steps', '1', '--learning_rate', '5e-2',
            '--warmup_ratio', '0', '--gradient_checkpointing', 'false', '--dataloader_num_workers', '0',
            '--dataset_num_proc', '1', '--split_dataset_ratio', '0', '--report_to', 'none', '--check_model', 'false',
            '--add_version', 'false', '--output_dir', str(out), '--dump_rollouts', str(out / 'rollouts.jsonl'),
            # a random model never ends its answer: keep its truncated completions in the loss
            '--overlong_filter', 'false', '--seed', '7', *extra]


def read_dump(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_advantage_rule(rows, group_size=4):
    """Every (step, question): half speech, half text; advantage = reward - mean of the same modality."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r['step'], r['key'])].append(r)
    for (step, key), members in groups.items():
        assert len(members) % group_size == 0, (step, key, len(members))
        mods = [m['modality'] for m in members]
        assert mods.count('speech') == mods.count('text'), (step, key, mods)
        for modality in ('speech', 'text'):
            cell = [m for m in members if m['modality'] == modality]
            valid = [m['reward'] for m in cell if m['reward'] is not None]
            mean = sum(valid) / len(valid) if valid else 0.0
            for m in cell:
                expected = 0.0 if m['reward'] is None else m['reward'] - mean
                assert m['advantage'] == pytest.approx(expected, abs=1e-5), (step, key, m)
        for m in members:
            total = sum(m[name] for name in REWARDS)
            assert m['reward'] == pytest.approx(total, abs=1e-5)
    return groups


def lora_b_norm(checkpoint: Path) -> float:
    weights = load_file(str(checkpoint / 'adapter_model.safetensors'))
    b = [w for name, w in weights.items() if 'lora_B' in name]
    assert b, 'no LoRA B weights in the adapter'
    return float(sum(w.float().norm() ** 2 for w in b) ** 0.5)


def test_grpo_steps_with_all_tars_rewards_and_audio(tiny_model, grpo_jsonl, tmp_path):
    out = tmp_path / 'run'
    run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out)])
    rows = read_dump(out / 'rollouts.jsonl')
    assert {r['step'] for r in rows} == {1, 2}
    assert len(rows) == 2 * 8  # two steps of 2 questions x 4 rollouts
    check_advantage_rule(rows)
    assert all(set(REWARDS) <= set(r) for r in rows)
    assert any(r['advantage'] != 0 for r in rows)
    # LoRA B starts at zero: a non-zero B means the adapter was trained; it also changed between steps
    assert lora_b_norm(out / 'checkpoint-1') > 0
    assert lora_b_norm(out / 'checkpoint-2') != pytest.approx(lora_b_norm(out / 'checkpoint-1'))
    # only LoRA weights are saved (the audio encoder stays frozen)
    names = load_file(str(out / 'checkpoint-2' / 'adapter_model.safetensors')).keys()
    assert not any('audio_tower' in n or 'visual' in n for n in names)
    logs = [json.loads(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    train_logs = [l for l in logs if 'speech/reward' in l]
    assert train_logs and {'text/reward', 'speech/accuracy', 'text/completion_length',
                           'speech/rewards/tars_representation', 'tars/nan_reward_frac'} <= set(train_logs[0])


def test_a_kl_term_runs_the_reference_forward_apart_from_the_old_policy_one(tiny_model, grpo_jsonl, tmp_path):
    """--beta 0.04: after each old-policy forward ms-swift runs the reference forward (the policy without its
    LoRA, inside null_ref_context), which the trainer records as such: the states are pooled once per
    rollout (a second pooling would stop the run) and the KL is logged. At step 1 the LoRA's B is still
    zero, so the policy is its reference and the KL is exactly 0."""
    out = tmp_path / 'kl'
    run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out, '--beta', '0.04', steps=1)])
    rows = read_dump(out / 'rollouts.jsonl')
    assert len(rows) == 8
    check_advantage_rule(rows)
    assert all(r['tars_representation'] is not None for r in rows)
    logs = [json.loads(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    kl = [l['kl'] for l in logs if 'kl' in l]
    assert kl and kl[0] == pytest.approx(0.0, abs=1e-6)
    assert any('speech/clip_ratio' in l for l in logs)


def test_two_ranks_whose_groups_span_ranks(tiny_model, grpo_jsonl, tmp_path):
    """2 gloo processes, 2 rollouts each: every question's 4 rollouts are split over the two ranks."""
    out = tmp_path / 'ddp'
    run(['torchrun', '--nproc_per_node', '2', '--master_port', '29633', '-m', 'trainer.grpo',
         *grpo_args(tiny_model, grpo_jsonl, out, '--ddp_backend', 'gloo', '--use_cpu', 'true', batch=2)])
    rows = read_dump(out / 'rollouts.jsonl')
    groups = check_advantage_rule(rows)
    assert {len(m) for m in groups.values()} == {4}
    assert (out / 'checkpoint-2' / 'adapter_model.safetensors').exists()


def test_deepspeed_zero2_single_process(tiny_model, grpo_jsonl, tmp_path):
    out = tmp_path / 'ds'
    env = {'RANK': '0', 'WORLD_SIZE': '1', 'LOCAL_RANK': '0', 'LOCAL_WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1',
           'MASTER_PORT': '29634'}
    run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out, '--deepspeed', 'zero2', steps=1)],
        env=env)
    check_advantage_rule(read_dump(out / 'rollouts.jsonl'))
    assert lora_b_norm(out / 'checkpoint-1') > 0


def strict_json(line: str):
    """json.loads that rejects NaN / Infinity, as strict JSON readers do."""
    def reject(name):
        raise ValueError(f'bare {name} in {line[:80]}')
    return json.loads(line, parse_constant=reject)


def test_resume_continues_the_step_count(tiny_model, grpo_jsonl, tmp_path):
    """A run killed during step 2 (after checkpoint-1) resumes at step 2: step 1 is neither redone nor lost,
    and its logs (logging.jsonl, TensorBoard, rollout dump) read as those of a run that never stopped."""
    import shutil
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / 'resume'
    tensorboard = ('--report_to', 'tensorboard')
    run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out, *tensorboard, steps=2)])
    shutil.rmtree(out / 'checkpoint-2')  # killed before step 2 was saved; its dump and log lines were written
    first = [strict_json(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    assert [l.get('global_step/max_steps') for l in first][:2] == ['1/2', '2/2'] and 'log_history' in first[-1]
    step1 = [r for r in read_dump(out / 'rollouts.jsonl') if r['step'] == 1]
    with open(out / 'rollouts.jsonl', 'a') as fh:
        fh.write('{"step": 2, "key": "torn')  # ... and in the middle of a dump line
    run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out, *tensorboard, '--resume_from_checkpoint',
                                                   str(out / 'checkpoint-1'), steps=2)])
    rows = read_dump(out / 'rollouts.jsonl')
    assert [r['step'] for r in rows] == [1] * 8 + [2] * 8  # the unsaved step-2 lines were replaced
    assert rows[:8] == step1
    state = json.loads((out / 'checkpoint-2' / 'trainer_state.json').read_text())
    assert state['global_step'] == 2
    assert lora_b_norm(out / 'checkpoint-2') != pytest.approx(lora_b_norm(out / 'checkpoint-1'))
    # logging.jsonl: step 1 of the first attempt, step 2 once, one end of training (as an uninterrupted run)
    logs = [strict_json(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    steps = [l.get('global_step/max_steps') for l in logs if 'log_history' not in l]
    assert steps == ['1/2', '2/2', '2/2'], steps  # step 1, step 2, the train_runtime line
    assert 'train_runtime' in logs[2] and 'log_history' in logs[3] and len(logs) == 4
    assert logs[0] == first[0]
    # TensorBoard: the first attempt's step 2 is hidden by the restart marker; each step once
    acc = EventAccumulator(str(out / 'runs'))
    acc.Reload()
    assert [e.step for e in acc.Scalars('train/loss')] == [1, 2]
