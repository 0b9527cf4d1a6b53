"""The memory plan (trainer/memory_plan.py, docs/memory.md): parameter counts of the real configurations against
counts written out by hand, the formulas against hand-computed values, the launchers' preflight (DRY_RUN) and the
GPU smoke test's CPU-checkable parts."""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from trainer import memory_plan as mp
from trainer.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]


def n(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- parameter counts: one layer of each part by hand, the totals against the meta count ----

def whisper_layer(d: int, ffn: int) -> int:
    """A Whisper-style audio encoder layer: q, k, v, o (k without bias), two LayerNorms, fc1, fc2."""
    return 4 * d * d + 3 * d + 2 * 2 * d + (d * ffn + ffn) + (ffn * d + d)


def qwen2_attention(h: int, kv: int) -> int:
    """Qwen2 attention: q, k, v with bias, o without (kv = kv_heads x head_dim)."""
    return h * h + h + 2 * (h * kv + kv) + h * h


def test_qwen2_5_omni_layers_by_hand_and_totals():
    model, _ = mp.build_meta(mp.MODEL_SPECS['qwen2_5_omni'])
    layer = model.thinker.model.layers[0]
    assert n(layer.self_attn) == qwen2_attention(3584, 4 * 128) == 29_364_736
    assert n(layer.mlp) == 3 * 3584 * 18944 == 203_685_888
    assert n(model.thinker.audio_tower.layers[0]) == whisper_layer(1280, 5120) == 19_676_160
    count = mp.preset_count('qwen2_5_omni')
    llm = 152064 * 3584 * 2 + 28 * (29_364_736 + 203_685_888 + 2 * 3584) + 3584   # embeddings, lm_head untied
    assert count.parts['llm'] == llm == 7_615_616_512
    assert count.parts == {'llm': llm, 'audio': n(model.thinker.audio_tower), 'vision': n(model.thinker.visual),
                           'talker': n(model.talker), 'token2wav': n(model.token2wav)}
    # the published sizes: thinker 8.9 B (LLM 7.6, audio 0.64, vision 0.68), 10.7 B in all
    assert round(count.parts['audio'] / 1e9, 2) == 0.64 and round(count.parts['vision'] / 1e9, 2) == 0.68
    assert round(sum(count.parts.values()) / 1e9, 1) == 10.7
    assert count.shape == mp.LLMShape(3584, 18944, 28, 28, 4, 128, 152064, 32768)


def test_qwen2_audio_layers_by_hand_and_totals():
    model, _ = mp.build_meta(mp.MODEL_SPECS['qwen2_audio'])
    layer = model.model.language_model.layers[0]
    assert n(layer.self_attn) == qwen2_attention(4096, 4096) == 67_121_152
    assert n(layer.mlp) == 3 * 4096 * 11008
    assert n(model.model.audio_tower.layers[0]) == whisper_layer(1280, 5120)
    count = mp.preset_count('qwen2_audio')
    assert count.parts['llm'] == 156032 * 4096 * 2 + 32 * (67_121_152 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert sum(count.parts.values()) == n(model) and round(n(model) / 1e9, 1) == 8.4


def test_phi4_multimodal_layers_by_hand_and_totals():
    model, _ = mp.build_meta(mp.MODEL_SPECS['phi4_multimodal'])
    layer = model.model.layers[0]
    assert n(layer.self_attn) == 3072 * (3072 + 2 * 8 * 128) + 3072 * 3072          # fused qkv, o
    assert n(layer.mlp) == 3072 * 2 * 8192 + 8192 * 3072                             # fused gate_up, down
    block = model.model.embed_tokens_extend.audio_embed.encoder.encoders[0]
    assert n(block.self_attn) == 4 * (1024 * 1024 + 1024) == 4_198_400                # Conformer attention
    assert n(block.feed_forward_in) == 2 * 1024 + (1024 * 3072 + 3072) + (1536 * 1024 + 1024)   # norm, GLU up, down
    count = mp.preset_count('phi4_multimodal')
    assert count.parts['llm'] == 200064 * 3072 + 32 * (n(layer.self_attn) + n(layer.mlp) + 2 * 3072) + 3072  # tied
    assert sum(count.parts.values()) == n(model)


def test_embedder_counted_whole_by_hand():
    layer = (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128) + 3 * 1024 * 3072 + 2 * 1024
    assert mp.preset_count('qwen3_embedding').parts == {'llm': 151669 * 1024 + 28 * layer + 1024}   # 0.596 B


def test_qwen3_omni_thinker_is_counted():
    parts = mp.preset_count('qwen3_omni_moe').parts
    assert round(parts['llm'] / 1e9, 1) == 30.5 and set(parts) == {'llm', 'audio', 'vision'}


def test_every_vllm_preset_has_a_real_configuration():
    assert {p.model_type for p in PRESETS.values()} <= set(mp.MODEL_SPECS)


# ---- formulas by hand ----

def test_activation_and_kv_formulas_by_hand():
    s = mp.LLMShape(hidden=8, intermediate=16, layers=3, heads=2, kv_heads=1, head_dim=4, vocab=100)
    lora = mp.LoRAShape(modules=7, inputs=5 * 8 + 8 + 16, rank=2)
    # 2 h + 2 q + 2 kv + 3 I + 7 r = 16 + 16 + 8 + 48 + 14 = 102; with dropout + inputs 64, masks 64
    assert mp.layer_activation_elements(s, lora, dropout=True) == (166, 64)
    assert mp.layer_activation_elements(s, lora, dropout=False) == (102 + 16 + 16, 0)
    assert mp.activation_bytes(s, lora, tokens=10, dtype_bytes=2, checkpointing=False) == 3 * 10 * (166 * 2 + 64)
    assert mp.activation_bytes(s, lora, tokens=10, dtype_bytes=2, checkpointing=True) == 3 * 10 * 8 * 2 + 10 * 396
    assert mp.kv_bytes_per_token(mp.preset_count('qwen2_5_omni').shape) == 2 * 28 * 4 * 128 * 2 == 57344


def test_zero_stages_partition_what_they_should():
    st = mp.Settings(use_vllm=False, embedder=None, representation=False)
    rows = {z: dict((r[0], r[1]) for r in mp.make_plan(dataclasses.replace(st, deepspeed=z), 80).rows)
            for z in ('none', 'zero2', 'zero3')}
    lora = mp.preset_count('qwen2_5_omni').lora_per_rank * 8
    assert lora == 8 * 28 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert rows['none']['LoRA params + grads + Adam'] == pytest.approx(lora * 16 / mp.GIB)
    assert rows['zero2']['LoRA params + grads + Adam'] == pytest.approx(lora * (2 + 14 / 8) / mp.GIB)
    assert rows['zero3']['training weights'] == pytest.approx(rows['none']['training weights'] / 8)


def test_sequence_length_from_the_audio_limit():
    st = mp.Settings()
    assert st.sequence_length(mp.MODEL_SPECS['qwen2_5_omni']) == 512 + 60 * 25 + 512
    assert dataclasses.replace(st, max_audio_seconds=0).sequence_length(mp.MODEL_SPECS['qwen2_5_omni']) == 8704


# ---- the presets' settings fit the paper's batch on 8 x A100-80 with >= 10 % headroom ----

def paper(preset: str, gpu: str = 'A100-80', **changes) -> mp.Plan:
    p = PRESETS[preset]
    st = mp.Settings(preset=preset, use_vllm=p.vllm, vllm_memory_fraction=p.vllm_memory_fraction,
                     vllm_vision=mp._mm_limit_has_vision(p.vllm_limit_mm), max_length=p.max_length,
                     vllm_max_model_len=p.max_length, vllm_tensor_parallel=p.vllm_tensor_parallel,
                     deepspeed=p.deepspeed)
    return mp.make_plan(dataclasses.replace(st, **changes), mp.gpu_size(gpu))


@pytest.mark.parametrize('gpu', ['A100-80', 'H100-80'])
@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_presets_fit_eight_80_gb_gpus_with_ten_percent_headroom(preset, gpu):
    plan = paper(preset, gpu)
    assert plan.fits and plan.headroom_gib >= 0.1 * plan.gpu_gib, mp.format_plan(plan)
    if plan.vllm_need_gib:   # vLLM's KV cache holds every sequence its ranks generate at once
        assert plan.vllm_sequences >= plan.vllm_wanted_sequences


def test_qwen3_omni_needs_vllm_tensor_parallel_for_the_headroom_rule():
    """The preset's settings (ZeRO-3, vLLM tensor parallel 2 at 0.45) by hand on 8 x A100-80, against the same
    run with one engine per GPU, whose full bf16 copy leaves under 10 % at the smallest share that holds its 8
    sequences."""
    count = mp.preset_count('qwen3_omni_moe')
    llm, audio = count.parts['llm'], count.parts['audio']    # vision skipped by the modality limits
    plan = paper('qwen3_omni_moe')
    rows = {name: gib for name, gib, _ in plan.rows}
    # tensor parallel 2 halves the LLM's weights and, 4 kv heads over 2 GPUs, the KV per token: 48 layers x 2 x 2 x
    # 128 x 2 B = 48 KiB; one engine serves both ranks' 2 x 4 = 8 rollouts at once: 16 sequences
    assert mp.kv_bytes_per_token(count.shape, 2, 2) == 48 * 2 * 2 * 128 * 2 == 49_152
    assert mp.vllm_weight_params(count, vision=False, tensor_parallel=2) == llm / 2 + audio
    assert plan.vllm_wanted_sequences == 16 and plan.vllm_sequences >= 16
    assert rows['vLLM (fraction x GPU)'] == pytest.approx(0.45 * 80)
    assert rows['training weights'] == pytest.approx(sum(count.parts.values()) * 2 / 8 / mp.GIB)   # ZeRO-3
    assert plan.peak_gib == pytest.approx(sum(rows.values()))   # sleep level 0: everything at once
    assert plan.headroom_gib >= 0.1 * 80 and plan.peak_gib == pytest.approx(49.53, abs=0.01)
    single = paper('qwen3_omni_moe', vllm_tensor_parallel=1, vllm_memory_fraction=0.77)
    assert single.vllm_sequences >= single.vllm_wanted_sequences == 8
    assert mp.min_vllm_fraction(single) == 0.77 and single.headroom_gib < 0.1 * 80   # 75.13 GiB: 6 %
    # 40 GB cards: four GPUs per engine (weights 15.4 GiB a GPU) at 0.5
    small = paper('qwen3_omni_moe', 'A100-40', vllm_tensor_parallel=4, vllm_memory_fraction=0.5)
    assert small.fits and small.headroom_gib >= 0.1 * 40 and small.vllm_sequences >= small.vllm_wanted_sequences == 32
    assert not paper('qwen3_omni_moe', 'A100-40').fits
    with pytest.raises(ValueError, match=r'^--vllm_tensor_parallel_size 3 must divide the 8 GPUs \(ms-swift groups'):
        mp.settings_from_args(mp.parser().parse_args(['--preset', 'qwen3_omni_moe',
                                                      '--vllm_tensor_parallel_size', '3']))
    # the evaluation engine (eval.sh, one GPU) is not tensor parallel
    evaluation = mp.parser().parse_args(['--preset', 'qwen3_omni_moe', '--kind', 'eval', '--gpus', '1'])
    assert mp.settings_from_args(evaluation).vllm_tensor_parallel == 1


def test_the_original_fraction_does_not_hold_qwen2_5_omni_and_the_error_says_what_does():
    plan = paper('qwen2_5_omni', vllm_memory_fraction=0.15)
    assert not plan.fits and plan.vllm_budget_gib == 12.0
    message = mp.failure(plan.settings, plan)
    assert message.startswith('--vllm_gpu_memory_utilization 0.15 cannot fit: vLLM needs 18.0 GiB')
    fix = float(message.split('; --vllm_gpu_memory_utilization ')[1].split()[0])
    fitting = paper('qwen2_5_omni', vllm_memory_fraction=fix)
    below = paper('qwen2_5_omni', vllm_memory_fraction=fix - 0.01)
    # the smallest share that holds every sequence a rank generates at once (8 of 2524 tokens)
    assert fitting.fits and fitting.vllm_sequences >= 8 > below.vllm_sequences


def test_forty_gigabyte_cards_need_zero3_and_a_larger_vllm_share():
    plan = paper('qwen2_5_omni', 'A100-40')
    message = mp.failure(plan.settings, plan)
    assert 'with DEEPSPEED=zero3 fits' in message, message
    frac = float(message.split('--vllm_gpu_memory_utilization ')[2].split()[0])
    assert paper('qwen2_5_omni', 'A100-40', vllm_memory_fraction=frac, deepspeed='zero3').fits


def test_vision_skipped_by_the_modality_limits_saves_its_weights():
    with_vision = paper('qwen2_5_omni', vllm_vision=True)
    saved = with_vision.vllm_need_gib - paper('qwen2_5_omni').vllm_need_gib
    assert saved == pytest.approx(mp.preset_count('qwen2_5_omni').parts['vision'] * 2 / mp.GIB)   # 1.26 GiB


def test_qwen2_audio_positions_cap_vllm_max_model_len():
    plan = paper('qwen2_audio', vllm_max_model_len=8704)
    assert mp.failure(plan.settings, plan).startswith('--vllm_max_model_len 8704 cannot fit: the model takes at '
                                                      'most 8192 positions')


def test_gpu_sizes_and_bad_values():
    assert mp.gpu_size('A100-80') == 80 and mp.gpu_size('H200-141') == pytest.approx(140.4, abs=0.1)
    assert mp.gpu_size('24') == 24
    with pytest.raises(ValueError, match=r"GPU_MEMORY_GB \(--gpu\) must be one of A100-40, .* got 'big'"):
        mp.gpu_size('big')
    with pytest.raises(ValueError, match='cannot read the model configuration'):
        mp.read_config('no_such_model')


# ---- the launchers' preflight (DRY_RUN: nothing loads, nothing downloads) ----

def launch(script: str, env: dict, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    full = dict(os.environ, DRY_RUN='1', OUTPUT_DIR=str(tmp_path / 'run'), **env)
    full.pop('CUDA_VISIBLE_DEVICES', None)
    return subprocess.run(['bash', script, *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)


# USE_HF=0: a user's default (test.sh's scripts/cpu_env.sh exports USE_HF=1 for the offline CPU stack)
PAPER = {'MODEL': 'Qwen/Qwen2.5-Omni-7B', 'NPROC_PER_NODE': '8', 'GPU_MEMORY_GB': '80', 'USE_HF': '0'}


@pytest.mark.slow
def test_grpo_launcher_prints_a_plan_that_fits(tmp_path):
    proc = launch('train_grpo.sh', PAPER, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'memory plan: qwen2_5_omni grpo, 8 GPU(s) of 80.0 GiB' in proc.stdout
    assert '  headroom                             31.93  40 %' in proc.stdout
    assert 'downloads: models (Qwen/Qwen2.5-Omni-7B, Qwen/Qwen3-Embedding-0.6B; the xFinder judge when used) from ' \
           'ModelScope (USE_HF=1 for Hugging Face)' in proc.stdout
    train = shlex.split([line for line in proc.stdout.splitlines() if line.startswith('+ torchrun')][0][2:])
    assert train[train.index('--vllm_gpu_memory_utilization') + 1] == '0.3'
    assert json.loads(train[train.index('--vllm_limit_mm_per_prompt') + 1]) == {'audio': 1, 'image': 0, 'video': 0}
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_grpo_launcher_stops_on_the_original_fraction_before_anything(tmp_path):
    proc = launch('train_grpo.sh', PAPER, '--vllm_gpu_memory_utilization', '0.15', tmp_path=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('train_grpo.sh:')]
    assert errors == ['train_grpo.sh: --vllm_gpu_memory_utilization 0.15 cannot fit: vLLM needs 18.0 GiB of the '
                      '80.0 GiB GPU for its weights, activations and one 8704-token sequence but gets 12.0; '
                      '--vllm_gpu_memory_utilization 0.24 fits (peak 43.3 GiB)']
    assert '+ torchrun' not in proc.stdout and '+ python -m trainer.data' not in proc.stdout


@pytest.mark.slow
def test_launchers_stop_on_a_card_too_small(tmp_path):
    proc = launch('train_grpo.sh', dict(PAPER, GPU_MEMORY_GB='24'), tmp_path=tmp_path)
    assert proc.returncode == 2 and '+ torchrun' not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith('train_grpo.sh: --vllm_gpu_memory_utilization 0.3 cannot '
                                                          'fit: vLLM needs 18.0 GiB of the 24.0 GiB GPU')
    proc = launch('train_sft.sh', dict(PAPER, GPU_MEMORY_GB='16'), tmp_path=tmp_path)
    assert proc.returncode == 2 and '+ torchrun' not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith('train_sft.sh: the run needs 2')
    assert 'DEEPSPEED=zero3 fits' in proc.stderr
    proc = launch('train_dpo.sh', dict(PAPER, GPU_MEMORY_GB='huge'), tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "train_dpo.sh: GPU_MEMORY_GB (--gpu) must be one of A100-40, A100-80, H100-80, H200-141 or a size in GB, "
        "got 'huge'")


@pytest.mark.slow
def test_cpu_launch_without_gpu_memory_makes_no_plan(tmp_path):
    env = dict(PAPER)
    env.pop('GPU_MEMORY_GB')
    proc = launch('train_grpo.sh', env, tmp_path=tmp_path)
    assert proc.returncode == 0 and 'memory plan' not in proc.stdout


# ---- the GPU smoke test's CPU-checkable parts (scripts/gpu_smoke.py; the run itself needs a GPU) ----

def test_gpu_smoke_commands_plan_and_report(tmp_path, cache_dir):
    from scripts import gpu_smoke
    from scripts.recipes.tiny_models import tiny_model_dir
    model = tiny_model_dir('qwen2_5_omni', cache_dir)
    plan = gpu_smoke.smoke_plan(model, 80.0)
    # the twin is small: vLLM's share is the floor, the plan fits with its KV cache holding every sequence
    assert plan.settings.vllm_memory_fraction == gpu_smoke.SMOKE['min_fraction'] and plan.fits
    assert plan.vllm_sequences >= gpu_smoke.SMOKE['batch']
    cmd = gpu_smoke.grpo_command(model, tmp_path / 'grpo.jsonl', tmp_path / 'grpo', 0.1, flash=False)
    assert cmd[1:6] == ['-m', 'scripts.gpu_smoke', 'child', '--measure', str(tmp_path / 'grpo' / 'measured.json')]
    assert cmd[6] == 'trainer.grpo' and cmd[cmd.index('--vllm_gpu_memory_utilization') + 1] == '0.1'
    assert cmd[cmd.index('--torch_dtype') + 1] == 'bfloat16' and cmd[cmd.index('--attn_impl') + 1] == 'sdpa'
    assert json.loads(cmd[cmd.index('--vllm_limit_mm_per_prompt') + 1]) == {'audio': 1, 'image': 0, 'video': 0}
    ev, env = gpu_smoke.eval_command(model, tmp_path / 'set', tmp_path / 'eval', 0.1)
    assert ev[6:8] == ['eval.qa', '--model'] and ev[ev.index('--backend') + 1] == 'vllm'
    assert env == {'VLLM_GPU_MEMORY_UTILIZATION': '0.1'}
    # the settings the plan used are the command's
    st = plan.settings
    assert (st.batch_per_gpu, st.max_completion_length, st.vllm_max_model_len) == (
        int(cmd[cmd.index('--per_device_train_batch_size') + 1]), int(cmd[cmd.index('--max_completion_length') + 1]),
        int(cmd[cmd.index('--vllm_max_model_len') + 1]))
    # vLLM's log figures and ms-swift's step times
    log = ('INFO Model loading took 0.0412 GiB and 1.2 seconds\nINFO Available KV cache memory: 6.52 GiB\n'
           'INFO Available KV cache memory: 6.50 GiB\n')
    assert gpu_smoke.vllm_figures(log) == {'vllm_weights_gib': 0.0412, 'vllm_kv_cache_gib': 6.5}
    assert gpu_smoke.vllm_figures('') == {'vllm_weights_gib': None, 'vllm_kv_cache_gib': None}
    logging = tmp_path / 'logging.jsonl'
    logging.write_text('\n'.join(json.dumps(e) for e in [
        {'loss': 1.0, 'global_step/max_steps': '1/3', 'train_speed(s/it)': 4.0, 'memory(GiB)': 2.5},
        {'loss': 0.9, 'global_step/max_steps': '2/3', 'train_speed(s/it)': 3.0, 'memory(GiB)': 2.75},
        {'loss': 0.8, 'global_step/max_steps': '3/3', 'train_speed(s/it)': 2.5},
        {'train_runtime': 9.0}]) + '\n')
    assert gpu_smoke.step_times(logging) == [4.0, 2.0, 1.5]
    assert gpu_smoke._last(logging, 'memory(GiB)') == 2.75
    runs = {'grpo': {'exit_code': 0, 'max_memory_allocated_gib': 9.1}}
    result = gpu_smoke.report(plan, runs, 'NVIDIA H100 80GB HBM3, 79.2 GiB')
    out = tmp_path / 'smoke' / 'gpu_smoke.json'
    gpu_smoke.write_json(out, result)
    written = json.loads(out.read_text())
    assert written['runs'] == runs and written['plan']['fits'] is True
    assert written['planned_vllm_gib'] == pytest.approx(8.0)
    assert written['plan']['settings']['vllm_memory_fraction'] == 0.1
    assert not out.with_name('gpu_smoke.json.tmp').exists()


def test_gpu_smoke_child_records_peak_memory_also_on_failure(tmp_path):
    from scripts import gpu_smoke
    measure = tmp_path / 'measured.json'
    code = gpu_smoke.child(['--measure', str(measure), 'json.tool', str(tmp_path / 'missing.json')])
    data = json.loads(measure.read_text())
    assert code != 0 and data['exit_code'] == code
    assert data['max_memory_allocated_gib'] == 0.0 and data['max_memory_reserved_gib'] == 0.0   # no GPU here


def test_the_embedder_downloads_through_ms_swift_like_every_model(monkeypatch, tmp_path):
    """USE_HF applies to the behaviour embedder: a hub id goes through ms-swift's safe_snapshot_download (which
    picks ModelScope or, with USE_HF=1, the Hugging Face Hub), never to sentence-transformers as a hub id."""
    import swift.utils
    from trainer.embedder import resolve
    asked = []
    fetched = tmp_path / 'fetched'

    def downloader(model_id, *args, **kwargs):
        asked.append(model_id)
        return str(fetched)

    monkeypatch.setattr(swift.utils, 'safe_snapshot_download', downloader)
    assert resolve('Qwen/Qwen3-Embedding-0.6B') == str(fetched) and asked == ['Qwen/Qwen3-Embedding-0.6B']
    assert resolve(str(tmp_path)) == str(tmp_path) and resolve('minilm').endswith('model')
