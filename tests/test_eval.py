"""Evaluation: metrics and MRR on hand-made results, resume, the vLLM arguments, and end to end on the tiny
preset (every mode, ASR WER, LoRA merge equal to base + adapter)."""
import json
from pathlib import Path

import pytest
import torch

from eval import metrics as M
from trainer.text import normalize, wer_scores
from trainer.engine import ModelSpec, resolve_model, vllm_engine_kwargs
from trainer.extract import parse_xfinder, xfinder_prompt
from trainer.modes import build_request


def write_results(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def item(key, extracted, gold='A', error=None, category='c1'):
    return {'key': key, 'mode': 'audio', 'prompt_type': 'systhink', 'output': 'x', 'extracted': extracted,
            'gold': gold, 'correct': extracted == gold and error is None, 'error': error, 'category': category}


def test_run_metrics_on_hand_made_results(tmp_path):
    rows = [item('1', 'A'), item('2', 'B'), item('3', None), item('4', 'A', category='c2'),
            item('5', None, error='unreadable audio')]
    write_results(tmp_path / 'r.jsonl', rows)
    m = M.run_metrics(M.read_results(tmp_path / 'r.jsonl'))
    assert m['count'] == 5 and m['failed_items'] == 1
    assert m['accuracy'] == pytest.approx(2 / 5)  # a failed item counts as wrong
    assert m['extraction_failure_rate'] == pytest.approx(1 / 4)
    assert m['per_category'] == {'c1': pytest.approx(1 / 3), 'c2': 1.0}
    from trainer.stats import binomial_interval
    assert m['per_category_ci95'] == {'c1': pytest.approx(list(binomial_interval(1, 3))),
                                      'c2': pytest.approx(list(binomial_interval(1, 1)))}


def test_table_and_mrr_in_the_papers_layout():
    tab = M.table({'MMSU': {'audio': 0.60, 'text': 0.80}, 'OBQA': {'audio': 0.70, 'text': 0.90}})
    assert tab['columns'] == ['MMSU(A)', 'MMSU(T)', 'OBQA(A)', 'OBQA(T)', 'Avg(A)', 'MRR']
    assert tab['row']['Avg(A)'] == pytest.approx(0.65)
    assert tab['row']['MRR'] == pytest.approx(100 * 0.65 / 0.85)  # own Avg(T) by default
    given = M.table({'MMSU': {'audio': 0.60, 'text': 0.80}}, mrr_reference=0.5)
    assert given['row']['MRR'] == pytest.approx(120.0) and given['mrr_reference_kind'] == 'given'
    md = M.markdown('m', tab)
    assert '| m | 60.00 | 80.00 | 70.00 | 90.00 | 65.00 | 76.47 |' in md


def test_wer_normalisation_capping_and_corpus():
    # the original's jiwer order: punctuation goes before the contraction step, so contractions stay one word
    assert normalize("I can't go, it's John's dog.") == 'i cant go its johns dog'
    assert normalize("It's   the CAT's, isn't it?") == 'its the cats isnt it'
    # symbols stay; every whitespace character becomes one space (jiwer splits words on spaces)
    assert normalize("  What is 2+2?\n\nOption A: 4\nOption B:\t5.  ") == 'what is 2+2 option a 4 option b 5'
    s = wer_scores(['a b c d', 'x y', ''], ['a b c e', '', 'z'])
    # 1/4, and an empty hypothesis counts 1 (capped); the empty reference is skipped and counted
    assert s['per_utterance'] == [0.25, 1.0] and s['score'] == pytest.approx(0.625)
    assert s['skipped_empty_reference'] == 1 and s['corpus_wer'] == pytest.approx(3 / 6)


def test_requests_per_mode():
    messages, audios = build_request('audio', 'systhink', 'Q?', audio_path='/a.wav')
    assert audios == ['/a.wav'] and messages[-1]['content'] == '<audio>' and messages[0]['role'] == 'system'
    messages, audios = build_request('text_base', 'cot', 'Q?')
    assert audios == [] and messages[-1]['content'] == 'Q?\nSolve the multiple-choice question step-by-step.'
    messages, _ = build_request('audio', 'none', 'Q?', audio_path='/a.wav', audio_with_text=True)
    assert messages[-1]['content'] == '<audio>Q?'
    assert build_request('asr', 'none', 'Q?', transcript='what was heard')[0][-1]['content'] == 'what was heard'


def test_vllm_engine_arguments_for_a_gpu_run():
    kwargs = vllm_engine_kwargs(ModelSpec('Qwen/Qwen2.5-Omni-7B', adapter='ckpt'))
    assert kwargs['limit_mm_per_prompt'] == {'audio': 1, 'image': 0, 'video': 0} and kwargs['enable_lora'] is True
    assert kwargs['max_model_len'] == 6400 and kwargs['gpu_memory_utilization'] == 0.45
    assert vllm_engine_kwargs(ModelSpec('m'))['enable_lora'] is False


def test_engines_get_a_torch_dtype_not_its_name():
    """ms-swift's VllmEngine keys its dtype table by torch.dtype: the name 'bfloat16' gave KeyError 'bfloat16'."""
    from trainer.engine import engine_dtype
    assert engine_dtype() is (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert 'torch_dtype' not in vllm_engine_kwargs(ModelSpec('m'))  # set once, by new_vllm_engine


def test_xfinder_prompt_and_parsing():
    prompt = xfinder_prompt('Which?', 'I pick green', ['red', 'green'])
    assert prompt.endswith('Answer range: [["A", "red"], ["B", "green"]]\n\nKey extracted answer: ')
    assert parse_xfinder('B', ['red', 'green']) == 'B'
    assert parse_xfinder('green.', ['red', 'green']) == 'B'
    assert parse_xfinder('[No valid answer]', ['red', 'green']) is None


# The original's evaluation-only answer suffixes, written out by hand (a backslash before "boxed{}").
EVAL_SUFFIXES = {
    'boxed': '\nSolve the multiple-choice question, write the final selected option letter wrapped in '
             + chr(92) + 'boxed{}',
    'cotboxed': '\nSolve the multiple-choice question step-by-step. At the end, write the final selected option '
                'letter wrapped in ' + chr(92) + 'boxed{}',
    'selfasrcot': '\nTranscribe the audio to text, then solve the multiple-choice question step-by-step, finally '
                  'write the answer like: The answer is Option X. Use <sep> as a separator.',
}


@pytest.mark.parametrize('prompt_type', sorted(EVAL_SUFFIXES))
def test_evaluation_prompt_types_are_the_originals_texts(prompt_type):
    from trainer.prompts import ANSWER_SUFFIX, EVAL_PROMPT_TYPES, PROMPT_TYPES
    suffix = EVAL_SUFFIXES[prompt_type]
    assert ANSWER_SUFFIX[prompt_type] == suffix
    assert prompt_type in EVAL_PROMPT_TYPES and prompt_type not in PROMPT_TYPES  # evaluation only
    messages, audios = build_request('text', prompt_type, 'Q?')
    assert messages == [{'role': 'user', 'content': 'Q?' + suffix}] and audios == []  # no system prompt
    messages, audios = build_request('audio', prompt_type, 'Q?', audio_path='/a.wav')
    assert messages == [{'role': 'user', 'content': '<audio>' + suffix}] and audios == ['/a.wav']


def test_boxed_suffix_bytes():
    from trainer.prompts import ANSWER_SUFFIX
    assert ANSWER_SUFFIX['boxed'].encode().endswith(b'wrapped in \x5cboxed{}')
    assert ANSWER_SUFFIX['cotboxed'].count('\\') == 1 and ANSWER_SUFFIX['selfasrcot'].count('\\') == 0


def test_prompt_type_is_selectable_on_the_command_line():
    from eval.qa import build_parser, evaluate
    for prompt_type in ('boxed', 'cotboxed', 'selfasrcot', 'systhink'):
        args = build_parser().parse_args(['--model', 'm', '--dataset', 'd', '--prompt_type', prompt_type])
        assert args.prompt_type == prompt_type
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--model', 'm', '--dataset', 'd', '--prompt_type', 'boxxed'])
    with pytest.raises(ValueError, match='prompt_type'):
        evaluate('m', [('d', 'd')], prompt_type='boxxed', engine=object())


@pytest.mark.parametrize('output, expected', [
    (chr(92) + 'boxed{C}', 'C'),
    ('Step 1: green is a colour. Step 2: so it is green.\n' + chr(92) + 'boxed{B}', 'B'),
    ('The final selected option is $' + chr(92) + 'boxed{D}$.', 'D'),
    ('the audio says: which colour <sep> green is right <sep> The answer is Option B.', 'B'),
])
def test_answers_in_the_evaluation_prompts_formats_are_extracted(output, expected):
    from trainer.answer import extract_choice
    assert extract_choice(output, ['red', 'green', 'blue', 'black']) == expected


def test_a_checkpoint_without_its_base_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    (tmp_path / 'adapter_config.json').write_text(json.dumps({'base_model_name_or_path': '/gone/base'}))
    with pytest.raises(FileNotFoundError, match='base model'):
        resolve_model(str(tmp_path))


# ---------------------------------------------------------------- the tiny preset, end to end
class CountingEngine:
    """The real engine, counting the requests it is asked to answer."""

    def __init__(self, engine):
        self.engine, self.requests = engine, 0
        self.model = engine.model

    def infer(self, requests, *args, **kwargs):
        self.requests += len(requests)
        return self.engine.infer(requests, *args, **kwargs)


def test_every_mode_end_to_end_and_resume(tiny_model, tiny_adapter, tiny_speech_set, tmp_path):
    from trainer.engine import build_engine
    from eval.qa import evaluate
    spec = resolve_model(str(tiny_adapter), str(tiny_model))
    engine = CountingEngine(build_engine(spec, 'transformers', batch_size=4))
    kwargs = dict(model=str(tiny_adapter), base_model=str(tiny_model), datasets=[('MMSU', str(tiny_speech_set))],
                  out=tmp_path, split='train', max_items=4, max_new_tokens=8, batch_size=4, engine=engine)
    result = evaluate(**kwargs)
    assert engine.requests == 16  # 4 items x 4 modes
    for mode in ('audio', 'text', 'asr', 'text_base'):
        run = Path(result['dir']) / 'MMSU' / f'{mode}_systhink'
        rows = M.read_results(run / 'results.jsonl')
        assert len(rows) == 4
        assert {'key', 'mode', 'prompt_type', 'output', 'extracted', 'gold', 'correct'} <= set(rows[0])
        assert json.loads((run / 'metrics.json').read_text())['count'] == 4
    table = (Path(result['dir']) / 'table.md').read_text()
    assert '| model | VoiceBench-MMSU (4 of 3074) (A) | VoiceBench-MMSU (4 of 3074) (T) | Avg(A) | MRR |' in table
    assert '| paper: TARS (Qwen2.5-Omni) | 67.96 | 68.54 | 76.84 | 98.89 |' in table   # the twin's family
    for mode in ('audio', 'text', 'asr', 'text_base'):
        assert f'| VoiceBench-MMSU (4 of 3074) | {mode} | rule |' in table
    summary = json.loads((Path(result['dir']) / 'metrics.json').read_text())
    assert summary['model_type'] == 'qwen2_5_omni'
    assert set(summary['table']['ci95']) >= {'MMSU(A)', 'MMSU(T)', 'Avg(A)', 'Avg(T)', 'MRR'}
    # interrupted after two items of the text mode: only those two are generated again
    text = Path(result['dir']) / 'MMSU' / 'text_systhink' / 'results.jsonl'
    text.write_text(''.join(text.read_text().splitlines(keepends=True)[:2]))
    engine.requests = 0
    evaluate(**kwargs)
    assert engine.requests == 2 and len(M.read_results(text)) == 4
    # killed while writing its last line: the torn line is dropped and only that item is generated again
    lines = text.read_text().splitlines(keepends=True)
    text.write_text(''.join(lines[:3]) + lines[3][:len(lines[3]) // 2])
    engine.requests = 0
    evaluate(**kwargs)
    assert engine.requests == 1
    rows = M.read_results(text)
    assert len(rows) == 4 and [json.loads(line) for line in lines[:3]] == rows[:3]


def test_asr_wer_end_to_end_and_resume_after_a_torn_line(tiny_model, tiny_speech_set, tmp_path):
    from eval.asr import evaluate_asr
    from trainer.engine import build_engine
    engine = CountingEngine(build_engine(resolve_model(str(tiny_model)), 'transformers', batch_size=4))
    kwargs = dict(split='train', max_items=2, max_new_tokens=8, engine=engine)
    scores = evaluate_asr(str(tiny_model), f'SET={tiny_speech_set}', tmp_path, **kwargs)
    assert scores['count'] == 2 and 0 <= scores['score'] <= 1 and engine.requests == 2
    assert json.loads(next(tmp_path.glob('*/SET/asr_wer/metrics.json')).read_text())['count'] == 2
    # killed while writing its last line: the rerun drops the torn line and transcribes that item again
    results = next(tmp_path.glob('*/SET/asr_wer/results.jsonl'))
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + lines[1][:len(lines[1]) // 2])
    engine.requests = 0
    assert evaluate_asr(str(tiny_model), f'SET={tiny_speech_set}', tmp_path, **kwargs)['count'] == 2
    assert engine.requests == 1
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 2 and rows[0] == json.loads(lines[0])


def test_merged_model_equals_base_plus_adapter(tiny_model, tiny_adapter, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2_5OmniForConditionalGeneration
    from scripts.merge_lora import merge_lora
    merged_dir = merge_lora(str(tiny_adapter), str(tmp_path / 'merged'), str(tiny_model))
    ids = torch.tensor([[151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645]])
    base = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(tiny_model))
    with_adapter = PeftModel.from_pretrained(base, str(tiny_adapter)).eval()
    merged = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        a = with_adapter.base_model.model.thinker(input_ids=ids).logits
        b = merged.thinker(input_ids=ids).logits
        plain = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(tiny_model)).thinker(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain, atol=1e-4)  # the adapter really changes the model


def test_an_unreadable_clip_is_recorded_as_failed_and_the_run_goes_on(tiny_model, tmp_path):
    from eval.qa import evaluate
    from tests.test_data_and_launcher import good_row, make_set
    path = make_set(tmp_path, [good_row('ok'), good_row('broken', audio={'bytes': b'not audio', 'path': None})])
    result = evaluate(str(tiny_model), [('SET', path)], modes=['audio'], out=tmp_path / 'eval', split='train',
                      max_new_tokens=4, batch_size=2, backend='transformers')
    rows = {r['key']: r for r in M.read_results(Path(result['dir']) / 'SET' / 'audio_systhink' / 'results.jsonl')}
    assert set(rows) == {'ok', 'broken'}
    assert rows['broken']['correct'] is False
    assert "'broken'" in rows['broken']['error'] and 'audio' in rows['broken']['error']
    assert rows['ok'].get('error') is None and isinstance(rows['ok']['output'], str)
    assert result['datasets']['SET']['audio']['failed_items'] == 1


def test_inference_answers_speech_and_text(tiny_model, tiny_speech_set, tmp_path, capsys):
    from infer.answer import main, options_in
    from trainer.data import write_clip
    from trainer.schema import load_hf_dataset
    row = load_hf_dataset(str(tiny_speech_set))[0]
    wav = write_clip(row, 'set', tmp_path)
    main(['--model', str(tiny_model), '--audio', wav, '--text', row['prompt_for_tts'], '--max_new_tokens', '6',
          '--backend', 'transformers'])
    out = capsys.readouterr().out
    assert out.count('--- speech ---') == 1 and out.count('--- text ---') == 1 and out.count('answer: ') == 2
    assert options_in('Q\nOption A: red\nOption B: green') == ['red', 'green']


VOICEBENCH_FIELDS = ['key', 'mode', 'prompt', 'reference', 'response']


@pytest.mark.slow
def test_eval_sh_embedded_shows_intervals_judges_names_and_exports_voicebench(tmp_path):
    """``bash eval.sh`` (embedded: the tiny preset, the small MMLU set, every mode): table.md carries the
    intervals, failure rates, the judge, the benchmark with its item count; each run folder holds
    voicebench.jsonl with exactly the fields VoiceBench's evaluate.py --evaluator mcq reads (and ours)."""
    import os
    import subprocess
    from tests.conftest import REPO
    env = dict(os.environ, OUT=str(tmp_path), MAX_ITEMS='4', MAX_NEW_TOKENS='16')
    env.pop('CUDA_VISIBLE_DEVICES', None)
    proc = subprocess.run(['bash', 'eval.sh'], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    model_dir, = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(('_', '.'))][:1]
    table = (model_dir / 'table.md').read_text()
    assert '| model | MMLU (4) (A) | MMLU (4) (T) | Avg(A) | MRR |' in table
    assert 'Paper rows: none apply' in table
    assert ('| benchmark (items) | mode | judge | accuracy % [95 %] | failure % | random-letter fallback % [95 %] |'
            in table)
    for mode in ('audio', 'text', 'asr', 'text_base'):
        run = model_dir / 'MMLU' / f'{mode}_systhink'
        metrics = json.loads((run / 'metrics.json').read_text())
        lo, hi = metrics['accuracy_ci95']
        assert 0 <= lo <= metrics['accuracy'] <= hi <= 1
        assert metrics['fallback_accuracy'] == pytest.approx(metrics['accuracy'] + sum(
            1 / len(r['options']) for r in M.read_results(run / 'results.jsonl') if r['extracted'] is None) / 4)
        line = f"| MMLU (4) | {mode} | rule | {100 * metrics['accuracy']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] | " \
               f"{100 * metrics['failure_rate']:.2f} |"
        assert line in table
        results = M.read_results(run / 'results.jsonl')
        exported = [json.loads(x) for x in (run / 'voicebench.jsonl').read_text().splitlines()]
        assert [sorted(e) for e in exported] == [VOICEBENCH_FIELDS] * 4
        assert [(e['key'], e['reference'], e['response']) for e in exported] == [
            (r['key'], r['gold'], r['output'] or '') for r in results]
        assert all(e['prompt'] == r['question'] and e['mode'] == mode for e, r in zip(exported, results, strict=True))


def test_a_hub_id_is_a_merged_checkpoint_of_its_preset():
    spec = resolve_model('Qwen/Qwen2.5-Omni-7B')
    assert (spec.base, spec.adapter, spec.model_type) == ('Qwen/Qwen2.5-Omni-7B', None, 'qwen2_5_omni')


@pytest.mark.parametrize('layout', ['merged', 'adapter', 'swift_args', 'tars'])
def test_checkpoint_layouts_evaluate_with_no_extra_flags(layout, tiny_model, tiny_adapter, tiny_speech_set, tmp_path,
                                                         capsys):
    """What eval.sh runs for ``bash eval.sh MODEL`` (``eval.qa --model MODEL``, no --base_model) on twins laid out as:
    a merged folder; a peft/ms-swift LoRA adapter folder (base in adapter_config.json); an ms-swift checkpoint
    whose adapter_config names a base that is gone (base from args.json); the original's TARS checkpoint (an
    adapter folder with its ``speech-lora -> .`` link)."""
    import shutil
    from eval.qa import main
    model, base, adapter = tiny_model, str(tiny_model), None
    if layout != 'merged':
        model = tmp_path / 'ckpt' / 'checkpoint-7'
        shutil.copytree(tiny_adapter, model)
        adapter = str(model)
    if layout == 'swift_args':
        config = json.loads((model / 'adapter_config.json').read_text())
        (model / 'adapter_config.json').write_text(json.dumps(dict(config, base_model_name_or_path='/gone/base')))
        (model / 'args.json').write_text(json.dumps({'model': str(tiny_model), 'model_type': 'qwen2_5_omni'}))
    if layout == 'tars':
        (model / 'speech-lora').symlink_to('.')
    main(['--model', str(model), '--dataset', f'MMSU={tiny_speech_set}', '--split', 'train', '--max_items', '2',
          '--modes', 'text', '--max_new_tokens', '4', '--batch_size', '2', '--out', str(tmp_path / 'eval')])
    assert 'results and metrics in' in capsys.readouterr().out
    run, = (tmp_path / 'eval').glob('*/MMSU/text_systhink')
    config = json.loads((run / 'config.json').read_text())
    assert (config['base'], config['adapter']) == (base, adapter)
    assert len(M.read_results(run / 'results.jsonl')) == 2
    assert '| paper: Qwen2.5-Omni |' in (run.parent.parent / 'table.md').read_text()
