"""Preference data (docs/original.md §4.3) and the DPO / SFT launchers (docs/original.md §1.3, §4.1)."""
import json
import os
import shlex
import subprocess

import pytest

from scripts.dataset_building import preference as P
from tests.conftest import REPO
from tests.test_grpo_integration import lora_b_norm


# ---- pure pieces ----

@pytest.mark.parametrize('text, expected', [
    ('<answer>The answer is B.</answer><|im_end|>', '<answer>The answer is B.</answer>'),
    ('ok <|end|>\n', 'ok'),
    ('ok<|im_end|><|endoftext|>  ', 'ok'),
    ('no end token', 'no end token'),
    ('<|im_end|> inside stays', '<|im_end|> inside stays'),
])
def test_strip_end_of_turn(text, expected):
    assert P.strip_end_of_turn(text) == expected


def _state():
    return P.QuestionState('mmlu@1', 'Paris', 1, 'q')


def test_sampling_state_first_correct_then_wrong_is_easy():
    s = _state()
    s.add('right 1', True, 'B')
    assert not s.decided and s.gen_times() == 0
    s.add('right 2', True, 'B')
    s.add('wrong', False, 'C')
    assert s.decided and (s.chosen, s.rejected) == ('right 1', 'wrong')
    assert s.gen_times() == -3 and s.n_correct == 2 and s.extracted == ['B', 'B', 'C']


def test_sampling_state_first_wrong_is_hard_and_all_agree_is_zero():
    s = _state()
    s.add('w', False, None)
    s.add('r', True, 'B')
    assert s.gen_times() == 2 and s.record('audio')['mode'] == 'audio'
    t = _state()
    for _ in range(4):
        t.add('w', False, 'A')
    assert not t.decided and t.gen_times() == 0 and t.chosen is None and t.rejected == 'w'


@pytest.mark.parametrize('columns, chosen_type, rejected_type, expected', [
    (['chosen', 'rejected'], 'am2', 'am2', ('chosen', 'rejected')),
    (['chosen', 'chosen_tm2', 'rejected', 'rejected_tm2'], 'tm2', 'am2', ('chosen_tm2', 'rejected')),
    (['chosen', 'rejected', 'rejected_tm2'], 'am2', 'tm2', ('chosen', 'rejected_tm2')),
    (['chosen', 'rejected', 'rejected_am2'], 'am2', 'am2', ('chosen', 'rejected')),  # am2 keeps `rejected`
])
def test_column_selection_follows_the_original(columns, chosen_type, rejected_type, expected):
    assert P.resolve_columns(columns, chosen_type, rejected_type) == expected


# ---- the join on hand-made generation files ----

def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


@pytest.fixture
def samples(tiny_speech_set, tmp_path):
    from datasets import load_from_disk
    keys = load_from_disk(str(tiny_speech_set))['train']['key']
    root = tmp_path / 'samples'
    _write(root / 'text' / 'samples.shard0of2.jsonl', [
        {'key': keys[0], 'chosen': 'T0 right<|im_end|>', 'rejected': 'T0 wrong'},
        {'key': keys[1], 'chosen': 'T1 right', 'rejected': None},
        {'key': keys[2], 'chosen': None, 'rejected': 'T2 wrong'},
    ])
    _write(root / 'text' / 'samples.shard1of2.jsonl', [
        {'key': keys[3], 'chosen': 'T3 right', 'rejected': None},
        {'key': 'mmlu@not-in-base', 'chosen': 'x', 'rejected': 'y'},
    ])
    _write(root / 'audio' / 'samples.jsonl', [
        {'key': keys[0], 'chosen': 'A0 right', 'rejected': 'A0 wrong'},
        {'key': keys[1], 'chosen': None, 'rejected': 'A1 wrong'},
        {'key': keys[1], 'chosen': None, 'rejected': 'A1 second wrong'},  # duplicate: the first is kept
        {'key': keys[2], 'chosen': None, 'rejected': 'A2 wrong'},         # no text chosen: dropped
    ])
    return root, keys


def test_build_joins_on_the_row_key(tiny_speech_set, samples, tmp_path):
    root, keys = samples
    paths = P.build(str(tiny_speech_set), root, tmp_path / 'set', val_rows=1)
    rows = [json.loads(l) for p in ('dpo', 'dpo_val') for l in paths[p].read_text().splitlines()]
    assert sorted(r['tars_key'] for r in rows) == sorted([keys[0], keys[1]])
    by_key = {r['tars_key']: r for r in rows}
    # chosen = the text-conditioned correct answer, rejected = the speech-conditioned wrong one
    assert by_key[keys[0]]['messages'][-1] == {'role': 'assistant', 'content': 'T0 right'}  # end token stripped
    assert by_key[keys[0]]['rejected_response'] == 'A0 wrong'
    assert by_key[keys[1]]['rejected_response'] == 'A1 wrong'
    # the speech prompt with its clip, the systhink system prompt
    first = by_key[keys[0]]
    assert first['messages'][0]['role'] == 'system' and first['messages'][1]['content'] == '<audio>'
    assert len(first['audios']) == 1 and os.path.getsize(first['audios'][0]) > 1000
    assert len(paths['dpo_val'].read_text().splitlines()) == 1
    sft = [json.loads(l) for l in paths['sft'].read_text().splitlines()]
    assert len(sft) == 1 and 'rejected_response' not in sft[0] and sft[0]['messages'][-1]['role'] == 'assistant'
    report = json.loads((tmp_path / 'set' / 'report.json').read_text())
    assert report['joined'] == 2 and report['with_chosen'] == 4 and report['with_rejected'] == 3
    assert report['unknown_keys'] == ['mmlu@not-in-base'] and report['duplicate_keys'] == {'audio samples': 1}
    with pytest.raises(FileExistsError):
        P.build(str(tiny_speech_set), root, tmp_path / 'set')


def test_build_text_prompt_and_missing_samples(tiny_speech_set, samples, tmp_path):
    root, keys = samples
    paths = P.build(str(tiny_speech_set), root, tmp_path / 'set', prompt_modality='t', val_rows=0)
    row = json.loads(paths['dpo'].read_text().splitlines()[0])
    assert row['audios'] == [] and 'Option A' in row['messages'][1]['content']
    with pytest.raises(FileNotFoundError, match='text_base'):
        P.build(str(tiny_speech_set), root, tmp_path / 'other', chosen_mode='text_base')


def test_from_columns_reads_a_published_preference_set(tiny_speech_set, tmp_path):
    from datasets import load_from_disk
    ds = load_from_disk(str(tiny_speech_set))['train'].select(range(3))
    ds = ds.add_column('chosen', ['c0', 'c1', None]).add_column('rejected', ['r0', 'r1', 'r2'])
    ds = ds.add_column('chosen_tm2', ['t0', 't1', 't2'])
    ds.save_to_disk(str(tmp_path / 'pub'))
    paths = P.from_columns(str(tmp_path / 'pub'), tmp_path / 'a', val_rows=0)
    rows = [json.loads(l) for l in paths['dpo'].read_text().splitlines()]
    assert sorted((r['messages'][-1]['content'], r['rejected_response']) for r in rows) == [('c0', 'r0'), ('c1', 'r1')]
    paths = P.from_columns(str(tmp_path / 'pub'), tmp_path / 'b', chosen_type='tm2', val_rows=0)
    assert len(paths['dpo'].read_text().splitlines()) == 3
    ds.remove_columns('rejected').save_to_disk(str(tmp_path / 'pub2'))
    with pytest.raises(ValueError, match="no column 'rejected'"):
        P.from_columns(str(tmp_path / 'pub2'), tmp_path / 'c', val_rows=0)


def test_the_template_teaches_the_end_of_turn_token(tiny_model, tiny_speech_set, samples, tmp_path):
    """Targets are stored without the end-of-turn token; ms-swift's template appends exactly one."""
    from swift.model import get_processor
    from swift.template import get_template
    root, _ = samples
    paths = P.build(str(tiny_speech_set), root, tmp_path / 'set', val_rows=0)
    row = next(json.loads(l) for l in paths['dpo'].read_text().splitlines() if 'T0' in l)
    processor = get_processor(str(tiny_model))
    template = get_template(processor, template_type='qwen2_5_omni')
    template.set_mode('rlhf')
    enc = template.encode({'messages': row['messages'], 'audios': row['audios'],
                           'rejected_response': row['rejected_response']})
    im_end = processor.tokenizer.convert_tokens_to_ids('<|im_end|>')
    for side, text in (('chosen', 'T0 right'), ('rejected', 'A0 wrong')):
        labels = [t for t in enc[f'{side}_labels'] if t != -100]
        assert labels.count(im_end) == 1, side
        assert processor.tokenizer.decode(labels).startswith(text + '<|im_end|>'), side


# ---- generation on the tiny model ----

def test_generate_is_resumable_and_guards_its_settings(tiny_model, tiny_speech_set, tmp_path):
    kwargs = dict(mode='text', max_samples=2, samples_per_round=2, max_new_tokens=8, max_rows=4, backend='transformers',
                  batch_questions=2, batch_size=4)
    path = P.generate(str(tiny_model), str(tiny_speech_set), tmp_path, **kwargs)
    lines = path.read_text().splitlines()
    records = [json.loads(l) for l in lines]
    assert len(records) == 4 and len({r['key'] for r in records}) == 4
    for r in records:
        assert 1 <= r['n_samples'] <= 2 and len(r['extracted']) == r['n_samples']
        decided = r['chosen'] is not None and r['rejected'] is not None
        assert decided or r['n_samples'] == 2  # sampling stops early only once decided
        assert r['gen_times'] in ((-r['n_samples'], r['n_samples']) if decided else (0, ))
    # a run killed while writing the last question's line leaves half of it: the rerun drops the torn
    # line and generates only that question again
    path.write_text('\n'.join(lines[:3]) + '\n' + lines[3][:len(lines[3]) // 2])
    P.generate(str(tiny_model), str(tiny_speech_set), tmp_path, **kwargs)
    again = path.read_text().splitlines()
    assert again[:3] == lines[:3] and len(again) == 4 and json.loads(again[3])['key'] == records[3]['key']
    with pytest.raises(RuntimeError, match='other settings'):
        P.generate(str(tiny_model), str(tiny_speech_set), tmp_path, **dict(kwargs, max_samples=3))


# ---- launchers ----

def test_dpo_and_sft_defaults_reach_ms_swift():
    from trainer.preference_train import build_swift_argv
    dpo = build_swift_argv('dpo', ['--beta', '0.2'])
    assert dpo[:2] == ['--rlhf_type', 'dpo'] and dpo[dpo.index('--loss_type') + 1] == 'sigmoid'
    assert dpo[dpo.index('--learning_rate') + 1] == '2e-5' and dpo[dpo.index('--warmup_ratio') + 1] == '0.1'
    assert dpo[dpo.index('--lora_rank') + 1] == '8' and dpo[dpo.index('--truncation_strategy') + 1] == 'right'
    assert max(i for i, a in enumerate(dpo) if a == '--beta') > dpo.index('--loss_type')  # the user's value wins
    sft = build_swift_argv('sft', [])
    assert '--rlhf_type' not in sft and '--beta' not in sft and sft[-1].endswith('tars_plugin.py')
    with pytest.raises(ValueError):
        build_swift_argv('kto', [])


def _dry_run(script, env):
    full = dict(os.environ, DRY_RUN='1', **env)
    proc = subprocess.run(['bash', script], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)
    return proc, [shlex.split(l[2:]) for l in proc.stdout.splitlines() if l.startswith('+ ')]


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_launchers_dry_run_for_eight_gpus(tmp_path):
    proc, (prepare, train) = _dry_run('train_dpo.sh', {'NPROC_PER_NODE': '8', 'OUTPUT_DIR': str(tmp_path / 'd')})
    assert proc.returncode == 0, proc.stderr
    assert prepare[:4] == ['python', '-m', 'scripts.dataset_building.preference', 'from_columns']
    assert 'catm2ram2' in prepare[prepare.index('--dataset') + 1]
    assert train[:3] == ['torchrun', '--nproc_per_node', '8'] and train[train.index('-m') + 1:][:2] == [
        'trainer.preference_train', 'dpo']
    assert train[train.index('--gradient_accumulation_steps') + 1] == '8'  # 64 / 8 GPUs x 1
    assert train[train.index('--deepspeed') + 1] == 'zero2'
    assert train[train.index('--model') + 1] == 'Qwen/Qwen2.5-Omni-7B'
    proc, cmds = _dry_run('train_sft.sh', {'NPROC_PER_NODE': '8', 'PREFERENCE_DATA': '/data/pref',
                                          'OUTPUT_DIR': str(tmp_path / 's')})
    assert proc.returncode == 0 and len(cmds) == 1
    train = cmds[0]
    assert 'sft' in train and train[train.index('--dataset') + 1] == '/data/pref/sft.jsonl'
    assert train[train.index('--val_dataset') + 1] == '/data/pref/sft_val.jsonl'
    proc, _ = _dry_run('train_dpo.sh', {'NPROC_PER_NODE': '3', 'OUTPUT_DIR': str(tmp_path / 'x')})
    assert proc.returncode == 2 and 'WORLD_BATCH_SIZE' in proc.stderr


@pytest.mark.slow  # the slow tier (tests/conftest.py)
@pytest.mark.parametrize('kind', ['dpo', 'sft'])
def test_launcher_embedded_default_trains_a_few_steps(kind, tmp_path):
    out = tmp_path / kind
    env = dict(os.environ, MAX_STEPS='2', OUTPUT_DIR=str(out))
    env.pop('CUDA_VISIBLE_DEVICES', None)
    proc = subprocess.run(['bash', f'train_{kind}.sh'], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    # LoRA B starts at zero: a non-zero B is a trained adapter
    assert lora_b_norm(out / 'checkpoint-2') > 0
    logs = [json.loads(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    assert any('loss' in l for l in logs) and any('eval_loss' in l for l in logs)
    if kind == 'dpo':
        assert any('rewards/margins' in l for l in logs)
    report_path = proc.stdout.split('preference set: ')[1].splitlines()[0]
    report = json.loads(open(report_path).read())
    assert report['joined'] == report['train_rows'] + report['val_rows'] > 0
