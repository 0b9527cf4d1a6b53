"""trainer.compat: every library internal the project relies on still exists as it was written for. A failure
here after an upgrade means: re-read that entry's upstream code, then update trainer/compat.py."""
from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version

import pytest
import torch

from trainer import compat


def _resolve(target: str):
    module, _, path = target.partition(':')
    obj = importlib.import_module(module)
    for part in path.split('.'):
        obj = getattr(obj, part)
    return obj


def _parameters(owner, name: str):
    """Parameter names of a method as callers pass them (self dropped unless it is a staticmethod)."""
    params = list(inspect.signature(getattr(owner, name)).parameters)
    return params if isinstance(inspect.getattr_static(owner, name), staticmethod) else params[1:]


@pytest.mark.parametrize('dist', sorted(compat.WRITTEN_FOR))
def test_installed_versions_are_the_ones_the_touches_were_checked_against(dist):
    assert version(dist) == compat.WRITTEN_FOR[dist], \
        f'{dist} changed: re-check trainer/compat.py TOUCHES and OVERRIDES, then update WRITTEN_FOR'


@pytest.mark.parametrize('touch', compat.TOUCHES, ids=lambda t: t.target)
def test_every_touched_internal_still_exists(touch):
    if touch.target == 'transformers.integrations.deepspeed:_hf_deepspeed_config_weak_ref':
        import transformers.integrations.deepspeed as hf_ds
        assert hasattr(hf_ds, '_hf_deepspeed_config_weak_ref')
        # the module global is what is_deepspeed_zero3_enabled reads
        assert '_hf_deepspeed_config_weak_ref' in inspect.getsource(hf_ds.is_deepspeed_zero3_enabled)
        return
    obj = _resolve(touch.target)
    if touch.parameters:
        assert tuple(inspect.signature(obj).parameters)[:len(touch.parameters)] == touch.parameters


@pytest.mark.parametrize('owner,method', [(o, m) for o, ms in compat.OVERRIDES.items() for m in ms])
def test_every_overridden_hook_keeps_its_parameters(owner, method):
    cls = _resolve(owner)
    expected = compat.OVERRIDES[owner][method]
    assert tuple(_parameters(cls, method)[:len(expected)]) == expected


def test_every_trainer_override_is_listed_typed_and_documented():
    """Each ms-swift method TARSGRPOTrainer overrides is in OVERRIDES (so its parameters are checked above),
    annotates every parameter and its return, and says in its docstring what ms-swift calls it with."""
    from swift.rlhf_trainers import GRPOTrainer

    from trainer.grpo_trainer import TARSGRPOTrainer
    listed = compat.OVERRIDES['swift.rlhf_trainers:GRPOTrainer']
    overrides = [name for name, value in vars(TARSGRPOTrainer).items()
                 if callable(value) and not isinstance(value, type) and name != '__init__'
                 and hasattr(GRPOTrainer, name)]   # a class attribute (sample_cls) is a Touch, not a hook
    assert sorted(overrides) == sorted(set(listed) - {'_compute_rewards_per_func', 'split_by_mini_batches',
                                                      '_load_state_dict_to_vllm'})
    for name in overrides:
        function = inspect.unwrap(getattr(TARSGRPOTrainer, name))
        signature = inspect.signature(function)
        missing = [p.name for p in list(signature.parameters.values())[1:] if p.annotation is inspect.Parameter.empty]
        assert not missing and signature.return_annotation is not inspect.Signature.empty, (name, missing)
        assert 'ms-swift calls it' in (function.__doc__ or '') or 'ms-swift enters it' in (function.__doc__ or ''), name


def test_the_trainers_own_attributes_are_not_ms_swifts():
    """An attribute TARSGRPOTrainer adds must not overwrite one of ms-swift's, TRL's or transformers' trainers
    (ms-swift keeps its step counter in ``_step``); those it sets on purpose are ms-swift's stage outputs."""
    import re

    import swift.rlhf_trainers.grpo_trainer as swift_grpo
    import swift.rlhf_trainers.rlhf_mixin as swift_rlhf
    import swift.rlhf_trainers.rollout_mixin as swift_rollout
    import transformers.trainer as hf_trainer
    import trl.trainer.grpo_trainer as trl_grpo

    from trainer import grpo_trainer
    ours = set(re.findall(r'self\.(\w+)(?:: [^=]+)? = ', inspect.getsource(grpo_trainer)))
    upstream = ''.join(inspect.getsource(m) for m in (swift_grpo, swift_rlhf, swift_rollout, trl_grpo, hf_trainer))
    clashes = {name for name in ours if re.search(rf'self\.{name}\b', upstream)}
    assert clashes == {'_rewards_per_func', 'reward_func_names'}, clashes


def test_trainer_registration_reaches_ms_swift():
    from swift.trainers.trainer_factory import TrainerFactory
    saved = TrainerFactory.TRAINER_MAPPING.get('grpo')
    try:
        compat.register_trainer('grpo', 'trainer.grpo_trainer.TARSGRPOTrainer')
        assert TrainerFactory.TRAINER_MAPPING['grpo'] == 'trainer.grpo_trainer.TARSGRPOTrainer'
    finally:
        TrainerFactory.TRAINER_MAPPING['grpo'] = saved


def test_outside_zero3_init_clears_and_restores_the_zero3_registration():
    import transformers.integrations.deepspeed as hf_ds
    sentinel = object()
    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = sentinel
    try:
        with compat.outside_zero3_init():
            assert hf_ds._hf_deepspeed_config_weak_ref is None
        assert hf_ds._hf_deepspeed_config_weak_ref is sentinel
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def test_batch_modality_round_trips_on_a_grpo_batch():
    from swift.rl_core.data import GRPOBatch
    fields = {f.name: None for f in __import__('dataclasses').fields(GRPOBatch)}
    batch = GRPOBatch(**fields)
    assert compat.batch_modality(batch) is None
    compat.set_batch_modality(batch, torch.tensor([True, False]))
    assert compat.batch_modality(batch).tolist() == [True, False]


def test_peft_merge_leaves_no_adapter_bookkeeping():
    """The Phi-4 speech-LoRA merge relies on it: ms-swift would otherwise see an adapter on the merged base."""
    from peft import LoraConfig, get_peft_model
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=['0']))
    assert hasattr(peft_model.base_model.model, 'peft_config')
    assert not hasattr(peft_model.merge_and_unload(), 'peft_config')


def test_o200k_encoding_decodes_token_bytes():
    enc = compat.o200k_encoding()
    assert bytes(enc.decode_single_token_bytes(0)) == b'!'
