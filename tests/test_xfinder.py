"""The xFinder judge: its prompt, answer range and comparator (hand-written judge answers), its ms-swift
registration, and the whole path on a tiny random-weight twin of its architecture (the exact prompt the
engine encodes, greedy decoding, the rule-based fallback, failure counting), end to end in ``eval.qa`` and
in preference-data generation."""
import json
from pathlib import Path

import pytest

from trainer.extract import (XFINDER_SYSTEM, RuleExtractor, XFinderExtractor, answer_range, parse_xfinder,
                          xfinder_matches, xfinder_prompt)
from tests.conftest import PYTHON, run
from trainer.answer import extract_choice

OPTIONS = ['red', 'green', 'blue', 'black']

# What the judge must see for (question 'Which colour?', output 'I pick green.', OPTIONS): xtuner's default
# template around the xFinder system prompt and user text, written out by hand.
EXPECTED_PROMPT = (
    '<|System|>:You are a help assistant tasked with extracting the precise key answer from given output '
    'sentences.\n'
    '<|User|>:Question: """Which colour?"""\n\nOutput sentences: """I pick green."""\n\n'
    'Answer range: [["A", "red"], ["B", "green"], ["C", "blue"], ["D", "black"]]\n\n'
    'Key extracted answer: \n<|Bot|>:')


# ---- pure: prompt, answer range, comparator ----

def test_answer_range_is_json_dumps_default_with_ascii_escapes():
    assert answer_range(OPTIONS) == '[["A", "red"], ["B", "green"], ["C", "blue"], ["D", "black"]]'
    # the original sends json.dumps' default: non-ASCII escaped, quotes escaped
    assert answer_range(['café', 'say "hi"']) == '[["A", "caf\\u00e9"], ["B", "say \\"hi\\""]]'
    # beyond four options: the next letters (our extension; the original has A-D only)
    assert answer_range(['a', 'b', 'c', 'd', 'e']).endswith('["D", "d"], ["E", "e"]]')


def test_user_text_is_the_originals():
    assert xfinder_prompt('Which colour?', 'I pick green.', OPTIONS) == (
        'Question: """Which colour?"""\n\nOutput sentences: """I pick green."""\n\n'
        'Answer range: [["A", "red"], ["B", "green"], ["C", "blue"], ["D", "black"]]\n\nKey extracted answer: ')


def test_format_prompt_is_xtuners_default_template():
    from trainer.models.xfinder import format_prompt
    user = xfinder_prompt('Which colour?', 'I pick green.', OPTIONS)
    assert format_prompt(XFINDER_SYSTEM, user) == EXPECTED_PROMPT


@pytest.mark.parametrize('judged, expected', [
    ('B', 'B'),
    ('b', 'B'),                 # lower-cased
    ('B.', 'B'),                # trailing '.' removed
    ('  C..  ', 'C'),           # stripped, all trailing dots removed
    ('green', 'B'),             # the option text
    ('Green.', 'B'),
    (' black ', 'D'),
    ('[No valid answer]', None),
    ('[Error in inference]', None),
    ('purple', None),           # outside the answer range
    ('E', None),                # a letter beyond the four options
    ('B or C', None),
    ('', None),
    ('B .', None),              # the original strips before removing dots: "b " is not "b"
])
def test_parse_xfinder_on_hand_written_judge_answers(judged, expected):
    assert parse_xfinder(judged, OPTIONS) == expected


def test_comparator_matches_letter_or_gold_option_text():
    assert xfinder_matches('b', OPTIONS, 1) and xfinder_matches('GREEN.', OPTIONS, 1)
    assert not xfinder_matches('green', OPTIONS, 0) and not xfinder_matches('A', OPTIONS, 1)
    assert xfinder_matches('Paris', ['Paris.', 'Rome'], 0)  # the option is normalised the same way
    # five options: E is in the range (our extension)
    assert parse_xfinder('E', OPTIONS + ['white']) == 'E'


def test_duplicate_option_texts_follow_the_original_comparator():
    # B "green" and D "green." normalise alike: the original compares with the gold option only, so an
    # extracted "green" is correct for gold B and for gold D
    options = ['red', 'green', 'blue', 'green.']
    assert xfinder_matches('green', options, 1) and xfinder_matches('green', options, 3)
    assert parse_xfinder('green', options, gold=3) == 'D'
    assert parse_xfinder('green', options, gold=1) == 'B'
    assert parse_xfinder('green', options, gold=0) == 'B'     # gold not among them: the first, still wrong
    assert parse_xfinder('green', options) == 'B'
    assert parse_xfinder('B', options, gold=3) == 'B'         # a letter names one option only


# ---- ms-swift registration and the twin ----

def test_registration_and_not_a_preset():
    from swift.model import MODEL_MAPPING
    from swift.template import TEMPLATE_MAPPING

    from trainer.models.xfinder import MODEL_TYPE, register
    from trainer.presets import PRESETS
    register()
    register()  # idempotent
    meta = MODEL_MAPPING[MODEL_TYPE]
    assert meta.architectures == ['Qwen2ForCausalLM'] and meta.template == MODEL_TYPE
    assert TEMPLATE_MAPPING[MODEL_TYPE].stop_words == ['<|endoftext|>', '<|im_end|>']
    assert MODEL_TYPE not in PRESETS


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_judge_twin_is_qwen1_5_shaped(cache_dir):
    from transformers import AutoConfig, AutoTokenizer

    from scripts.recipes.tiny_models import tiny_judge_dir
    from trainer.presets import PRESETS
    path = tiny_judge_dir(cache_dir)
    assert tiny_judge_dir(cache_dir) == path  # cached by recipe hash
    assert 'xfinder_qwen1505' not in PRESETS  # not a preset
    config = AutoConfig.from_pretrained(str(path))
    assert config.architectures == ['Qwen2ForCausalLM'] and config.model_type == 'qwen2'
    assert config.tie_word_embeddings and config.vocab_size == 151936 and config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.eos_token == '<|endoftext|>' and tok.convert_tokens_to_ids('<|im_end|>') == 151645
    assert '<think>' not in tok.get_added_vocab()
    assert not list(path.glob('*.bin')) and (path / 'model.safetensors').exists()


# ---- the judge twin through ms-swift ----

@pytest.fixture(scope='module')
def judge_dir(cache_dir):
    from scripts.recipes.tiny_models import tiny_judge_dir
    return tiny_judge_dir(cache_dir)


class RecordingEngine:
    """The real judge engine, keeping the requests and request configs it is asked to answer."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.model = engine.model

    def infer(self, requests, config, **kwargs):
        self.calls.append((requests, config))
        return self.engine.infer(requests, config, **kwargs)


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_the_engine_encodes_the_exact_prompt_decodes_greedily_and_falls_back(judge_dir):
    from swift.infer_engine.utils import prepare_generation_config
    from transformers import GenerationConfig

    from trainer.extract import build_judge_engine
    engine = build_judge_engine(str(judge_dir), 'transformers', batch_size=4)
    recorder = RecordingEngine(engine)
    judge = XFinderExtractor(str(judge_dir), engine=recorder)
    questions = ['Which colour?'] * 4
    outputs = ['I pick green.', 'The answer is C.', 'no idea at all', '<answer>The answer is D.</answer>']
    found = judge.extract(questions, outputs, [OPTIONS] * 4)

    (requests, config), = recorder.calls
    # greedy, pinned: temperature 0 turns sampling off even when the checkpoint's config samples (the
    # original passed T=0.7 and left it to the checkpoint); at most 100 new tokens
    assert config.temperature == 0 and config.max_tokens == 100
    sampling_checkpoint = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8)
    assert prepare_generation_config(sampling_checkpoint, config, engine.tokenizer).do_sample is False
    # the prompt the engine's template encodes, byte for byte, and tokenised as xFinder tokenises its
    # prompt string (one tokenizer call over the whole string, no BOS)
    encoded = engine.template.encode(requests[0])
    assert engine.tokenizer.decode(encoded['input_ids']) == EXPECTED_PROMPT
    assert encoded['input_ids'] == engine.tokenizer(EXPECTED_PROMPT)['input_ids']
    assert '<|im_start|>' not in engine.tokenizer.decode(engine.template.encode(requests[1])['input_ids'])

    # a random judge answers garbage: each item is xFinder's option when its answer parses, else the
    # rule-based extractor's; the raw answer is kept
    rule = [extract_choice(o, OPTIONS) for o in outputs]
    assert rule == ['B', 'C', None, 'D']
    for f, r in zip(found, rule, strict=True):
        assert isinstance(f.judge_output, str)
        if parse_xfinder(f.judge_output, OPTIONS):
            assert (f.choice, f.source) == (parse_xfinder(f.judge_output, OPTIONS), 'xfinder')
        else:
            assert (f.choice, f.source) == (r, 'rule' if r else None)
    assert sum(f.source != 'xfinder' for f in found) >= 1  # the garbage judge needed the fallback
    # greedy: the same answers again
    assert [f.judge_output for f in judge.extract(questions, outputs, [OPTIONS] * 4)] == [
        f.judge_output for f in found]
    assert judge(questions, outputs, [OPTIONS] * 4) == [f.choice for f in found]
    assert RuleExtractor()(questions, outputs, [OPTIONS] * 4) == rule


def _text_set(tmp_path):
    from tests.test_data_and_launcher import good_row, make_set
    return make_set(tmp_path, [good_row('k1'), good_row('k2', options=['café', 'green', 'blue', 'black']),
                               good_row('k3')])


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_eval_qa_with_the_xfinder_judge_end_to_end(tiny_model, judge_dir, tmp_path):
    dataset = _text_set(tmp_path)
    out = tmp_path / 'eval'
    run([PYTHON, '-m', 'eval.qa', '--model', str(tiny_model), '--dataset', f'SET={dataset}', '--modes', 'text',
         '--split', 'train', '--max_new_tokens', '4', '--batch_size', '3', '--backend', 'transformers',
         '--prompt_type', 'cotboxed', '--extractor', 'xfinder', '--xfinder_model', str(judge_dir), '--out', str(out)],
        env={'HF_HUB_OFFLINE': '1'})
    run_dir, = out.glob('*/SET/text_cotboxed')
    rows = [json.loads(line) for line in (run_dir / 'results.jsonl').read_text().splitlines()]
    assert [r['key'] for r in rows] == ['k1', 'k2', 'k3']
    for r in rows:
        assert isinstance(r['judge_output'], str) and r['extracted_by'] in ('xfinder', 'rule', None)
        if r['extracted_by'] is None:
            assert r['extracted'] is None and r['correct'] is False
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    none = sum(r['extracted'] is None for r in rows)
    assert metrics['extraction_failure_rate'] == pytest.approx(none / 3)
    assert metrics['xfinder_failure_rate'] == pytest.approx(sum(r['extracted_by'] != 'xfinder' for r in rows) / 3)
    assert sum(metrics['extracted_by'].values()) == 3
    config = json.loads((run_dir / 'config.json').read_text())
    assert config['extractor'] == 'xfinder' and config['xfinder_model'] == str(judge_dir)
    # each judge side by side: its own letters per item, its accuracy and failure rate, a line each in table.md
    for r in rows:
        assert set(r['judges']) == {'rule', 'xfinder'}
        assert r['judges']['rule'] == extract_choice(r['output'], r['options'])
    for name in ('rule', 'xfinder'):
        fails = sum(r['judges'][name] is None for r in rows)
        assert metrics['judges'][name]['failure_rate'] == pytest.approx(fails / 3)
    table = (run_dir.parent.parent / 'table.md').read_text()
    assert '| SET (3) | text | xfinder, rule fills in |' in table
    assert '| SET (3) | text | rule alone |' in table and '| SET (3) | text | xfinder alone |' in table


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_preference_generation_with_the_xfinder_judge(tiny_model, judge_dir, tmp_path):
    dataset = _text_set(tmp_path)
    out = tmp_path / 'pref'
    proc = run([PYTHON, '-m', 'scripts.dataset_building.preference', 'generate', '--model', str(tiny_model),
                '--dataset', dataset, '--out', str(out), '--mode', 'text', '--max_samples', '2',
                '--samples_per_round', '1', '--max_new_tokens', '4', '--max_rows', '2', '--batch_questions', '2',
                '--batch_size', '2', '--backend', 'transformers', '--extractor', 'xfinder',
                '--xfinder_model', str(judge_dir)], env={'HF_HUB_OFFLINE': '1'})
    path = Path(proc.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 and {r['key'] for r in records} <= {'k1', 'k2', 'k3'}
    for r in records:
        assert 1 <= r['n_samples'] <= 2 and len(r['extracted']) == r['n_samples']
        assert all(e in (None, 'A', 'B', 'C', 'D') for e in r['extracted'])
    config = json.loads((out / 'text' / 'config.json').read_text())
    assert config['extractor'] == 'xfinder' and config['xfinder_model'] == str(judge_dir)
