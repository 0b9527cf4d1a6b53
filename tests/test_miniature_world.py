"""The miniature's foundation (docs/miniature.md, "The world" and "The tokenizer"): the seeded world generator, its
speech plan and hf_format build, and the small tokenizer. No model is loaded; the one espeak build speaks six
short clips (run this file under the heavy lock)."""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scripts.dataset_building.tts import EspeakTTS, cache_key
from scripts.miniature import build as mbuild
from scripts.miniature import tokenizer as mtok
from scripts.miniature.world import (ATTRIBUTES, NAMES, OBJECTS, REGIONS, SPLITS, TEMPLATES, TOWNS,
                                     ArithmeticSpec, ComparisonSpec, KnowledgeSpec, KnowledgeTable, WorldConfig,
                                     generate_world, name_slot, render_arithmetic, render_comparison,
                                     render_knowledge)
from scripts.recipes.tiny_models import QWEN2_5_OMNI_SYSTEM
from trainer import prompts
from trainer.schema import audio_undecoded, load_audio, validate_dataset

SMALL = WorldConfig(seed=0, n_train=600, n_validation=90, n_test=150)


@pytest.fixture(scope='module')
def world():
    return generate_world()   # the default world: the one the tokenizer is trained on


def _rng() -> random.Random:
    return random.Random('test')

# --- the generator ---------------------------------------------------------------------------------------------


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = generate_world(SMALL), generate_world(SMALL), generate_world(WorldConfig(seed=1, n_train=600,
                                                                                       n_validation=90, n_test=150))
    assert a == b
    assert a.splits['test'] != c.splits['test'] and a.table != c.table


def test_the_default_world_is_pinned_and_hand_checked(world):
    """The first test items of seed 0, solved by hand: pins the generator across machines and Python runs
    (string seeds are hashed with SHA-512, not PYTHONHASHSEED)."""
    t = world.splits['test']
    assert t[0].question == 'Sue has 8 eggs and Eve has 6 eggs. Which of them has more eggs?'
    assert t[0].answer == 'Sue' and t[0].template == 'comparison' and t[0].letter == 'C'   # Sue's slot is 2
    assert t[0].thinking == 'Sue has 8 and Eve has 6, and 8 is more than 6, so Sue has more.'
    assert t[1].question == 'Sam lives in the town of Galt. What colour are the roofs there?'
    assert world.table.region_of('Galt') == 'west' and world.table.value('colour', 'west') == 'green'
    assert t[1].answer == 'green' and t[1].thinking == 'Galt lies in the west, and roofs in the west are green.'
    assert t[1].options == ('red', 'blue', 'green', 'yellow') and t[1].letter == 'C'   # the table's order
    assert t[3].question == 'Meg has 4 shells and buys 7 more. How many shells does Meg have now?'
    assert t[3].answer == '11' and t[3].options == ('8', '9', '10', '11') and t[3].letter == 'D'
    assert t[3].systhink_answer == '<think>4 plus 7 is 11.</think><answer>The answer is D.</answer>'
    assert t[3].prompt_for_tts == ('Meg has 4 shells and buys 7 more. How many shells does Meg have now?\n\n'
                                   'Option A: 8\nOption B: 9\nOption C: 10\nOption D: 11')
    assert t[0].key == 'mini-test-00000'


def test_hand_checked_arithmetic():
    q, options, i, thinking = render_arithmetic(ArithmeticSpec('add', 3, 4, 'apples', 'Ann', 'buys'), _rng())
    assert q == 'Ann has 3 apples and buys 4 more. How many apples does Ann have now?'
    assert options[i] == '7' and thinking == '3 plus 4 is 7.'
    q, options, i, thinking = render_arithmetic(ArithmeticSpec('sub', 9, 4, 'eggs', 'Tom', 'gives', 'Sue'), _rng())
    assert q == 'Tom has 9 eggs and gives 4 to Sue. How many eggs does Tom have now?'
    assert options[i] == '5' and thinking == '9 minus 4 is 5.'
    q, options, i, _ = render_arithmetic(ArithmeticSpec('sub', 3, 2, 'cups', 'Eve', 'loses'), _rng())
    assert q == 'Eve has 3 cups and loses 2. How many cups does Eve have now?' and options[i] == '1'


def test_hand_checked_comparison():
    q, options, i, thinking = render_comparison(ComparisonSpec('Tom', 'Sue', 3, 8, 'coins', 1), _rng())
    assert q == 'Tom has 3 coins and Sue has 8 coins. Which of them has more coins?' and options[i] == 'Sue'
    assert thinking == 'Tom has 3 and Sue has 8, and 3 is less than 8, so Sue has more.'
    assert options[1] == 'Tom' and options[2] == 'Sue' and i == 2   # a name's letter is its slot
    assert [name_slot(o) for o in options] == [0, 1, 2, 3]
    q, options, i, thinking = render_comparison(ComparisonSpec('Ann', 'Max', 9, 2, 'hats', 0), _rng())
    assert q == 'Ann has 9 hats and Max has 2 hats. Who has more hats?' and options[i] == 'Ann' and i == 0
    assert thinking == 'Ann has 9 and Max has 2, and 9 is more than 2, so Ann has more.'


def test_options_are_canonical_so_a_letter_follows_from_the_answer(world):
    """The option order is fixed by the world (the letter is a function of the answer) and the letters stay
    balanced (checked in test_sizes_balance_and_letters)."""
    for item in world.items():
        if item.template == 'arithmetic':
            n = int(item.answer)
            assert item.options == tuple(str(n - n % 4 + k) for k in range(4)) and item.answer_index == n % 4
        elif item.template == 'comparison':
            assert item.answer_index == name_slot(item.answer)
        else:
            assert item.options in set(ATTRIBUTES.values())


def test_hand_checked_knowledge():
    table = KnowledgeTable({'Brill': 'north', 'Dorn': 'south'},
                           {'animal': {'north': 'fox', 'south': 'bear', 'east': 'owl', 'west': 'deer'},
                            'fruit': {'north': 'figs', 'south': 'plums', 'east': 'limes', 'west': 'grapes'}})
    q, options, i, thinking = render_knowledge(KnowledgeSpec('Brill', 'animal', 'Ann', 0), table, _rng())
    assert q == 'Ann lives in the town of Brill. Which animal lives there?'
    assert options[i] == 'fox' and thinking == 'Brill lies in the north, and the fox lives in the north.'
    assert sorted(options) == ['bear', 'deer', 'fox', 'owl']
    q, options, i, thinking = render_knowledge(KnowledgeSpec('Dorn', 'fruit', 'Tom', 1), table, _rng())
    assert q == 'Tom visits the town of Dorn. Which fruit do people grow there?'
    assert options[i] == 'plums' and thinking == 'Dorn lies in the south, and people in the south grow plums.'


def solve(question: str, table: KnowledgeTable) -> str:
    """An independent solver of the world's questions (parses the text; shares nothing with the renderer)."""
    m = re.fullmatch(r'(\w+) has (\d+) (\w+) and (buys|finds|gets|gives|loses|sells) (\d+)( more| to \w+)?\. '
                     r'How many \3 does \1 have now\?', question)
    if m:
        a, b = int(m[2]), int(m[5])
        return str(a + b if m[4] in ('buys', 'finds', 'gets') else a - b)
    m = re.fullmatch(r'(\w+) has (\d+) (\w+) and (\w+) has (\d+) \3\. (?:Who|Which of them) has more \3\?', question)
    if m:
        return m[1] if int(m[2]) > int(m[5]) else m[4]
    m = re.fullmatch(r'\w+ (?:lives in|visits) the town of (\w+)\. (.*)', question)
    attribute = {'Which animal lives there?': 'animal', 'What colour are the roofs there?': 'colour',
                 'Which tree grows there?': 'tree', 'Which fruit do people grow there?': 'fruit'}[m[2]]
    return table.value(attribute, table.region_of(m[1]))


def test_every_answer_is_right_and_the_options_are_sound(world):
    for item in world.items():
        assert item.answer == solve(item.question, world.table), item
        assert len(item.options) == 4 and len(set(item.options)) == 4, item
        assert item.options.count(item.answer) == 1 and all(o.strip() for o in item.options), item
        assert item.answer in item.thinking, item
        if item.template == 'arithmetic':
            assert all(o.isdigit() for o in item.options), item
    n = sum(1 for _ in world.items())
    assert n == 6000 + 300 + 1200


def test_splits_are_disjoint_by_the_held_out_values(world):
    keys = {s: {(i.template, i.holdout) for i in world.splits[s]} for s in SPLITS}
    assert not keys['train'] & keys['test'] and not keys['train'] & keys['validation']
    assert not keys['validation'] & keys['test']
    # the keys are the values of the question: numbers and object, the two people, town and attribute
    for item in world.splits['test']:
        if item.template == 'arithmetic':
            op, a, b, obj = item.holdout
            assert f' has {a} {obj} and ' in item.question and f' {b}' in item.question
        elif item.template == 'comparison':
            assert all(name in item.question for name in item.holdout) and len(item.holdout) == 2
        else:
            assert f'town of {item.holdout[0]}.' in item.question
    # no test question text occurs in training
    assert not {i.question for i in world.splits['test']} & {i.question for i in world.splits['train']}


def test_the_knowledge_test_is_answerable_from_training(world):
    """Every test town's region and every test (region, attribute) value are asked in training."""
    train = [i for i in world.splits['train'] if i.template == 'knowledge']
    towns = {i.holdout[0] for i in train}
    region_attribute = {(world.table.region_of(i.holdout[0]), i.holdout[1]) for i in train}
    for item in world.splits['test']:
        if item.template == 'knowledge':
            town, attribute = item.holdout
            assert town in towns and (world.table.region_of(town), attribute) in region_attribute


def test_the_numbers_hold_out_keeps_whole_sums_out_of_training():
    w = generate_world(WorldConfig(n_train=600, n_validation=90, n_test=150, arithmetic_holdout='numbers'))
    facts = {s: {i.holdout for i in w.splits[s] if i.template == 'arithmetic'} for s in SPLITS}
    assert all(len(k) == 3 for k in facts['test']) and not facts['test'] & facts['train']


def test_sizes_balance_and_letters(world):
    assert len(world.splits['test']) >= 1068   # a 95 % interval of at most +-3 points at 50 % accuracy
    for split in SPLITS:
        counts = Counter(i.template for i in world.splits[split])
        assert set(counts) == set(TEMPLATES) and max(counts.values()) - min(counts.values()) <= 1
    letters = Counter(i.letter for i in world.splits['test'])
    # canonical option orders make a letter a function of the answer, so the shares follow the held-out values:
    # no letter is rare, none above a third (seed 0: C 31 %, the always-C baseline the report names)
    assert set(letters) == set('ABCD') and all(0.2 < n / 1200 < 0.33 for n in letters.values()), letters


def test_the_word_list_is_closed(world):
    template_words = {'has', 'and', 'more', 'How', 'many', 'does', 'have', 'now', 'to', 'is', 'than', 'Who', 'the',
                      'lives', 'in', 'town', 'of', 'visits', 'Which', 'animal', 'there', 'What', 'colour', 'are',
                      'roofs', 'tree', 'grows', 'fruit', 'do', 'people', 'grow', 'lies', 'plus', 'minus', 'so',
                      'them', 'less',
                      'buys', 'finds', 'gets', 'gives', 'loses', 'sells', 'Option', 'A', 'B', 'C', 'D'}
    allowed = (template_words | set(NAMES) | set(OBJECTS) | set(TOWNS) | set(REGIONS)
               | {v for vs in ATTRIBUTES.values() for v in vs})
    seen = set()
    for item in world.items():
        seen |= set(re.findall(r'[A-Za-z]+', item.prompt_for_tts + ' ' + item.thinking))
    assert seen <= allowed, sorted(seen - allowed)
    assert len(seen) < 200


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match='n_towns=10'):
        WorldConfig(n_towns=10)
    # 5000 over three templates: 1667, 1667, 1666; the knowledge test has 16 (town, attribute) keys x 16 names x 2
    with pytest.raises(ValueError, match="split 'test' asks 1666 knowledge questions .* only 512 distinct"):
        generate_world(WorldConfig(n_test=5000))

# --- speech ----------------------------------------------------------------------------------------------------


def test_speech_plan_holds_one_voice_out_of_training():
    w = generate_world(SMALL)
    plan = mbuild.speech_plan(w)
    assert plan == mbuild.speech_plan(w)
    train_voices = Counter(plan[i.key].voice for i in w.splits['train'])
    assert mbuild.HELD_OUT_VOICE not in train_voices and set(train_voices) == set(mbuild.TRAIN_VOICES)
    for split in ('validation', 'test'):
        assert {plan[i.key].voice for i in w.splits[split]} == {mbuild.HELD_OUT_VOICE}
    assert {v.rate for v in plan.values()} == set(mbuild.RATES)
    assert {v.pitch for v in plan.values()} == set(mbuild.PITCHES)
    with pytest.raises(ValueError, match='also a training voice'):
        mbuild.speech_plan(w, held_out_voice='en-us')


def test_clip_names_follow_text_and_voicing(tmp_path):
    v = mbuild.Voicing('en-us', 175, 50)
    p = mbuild.clip_path(tmp_path, 'mini-test-00001', 'Hello.', v)
    assert p.parent == tmp_path and re.fullmatch(r'mini-test-00001-[0-9a-f]{10}\.wav', p.name)
    assert p == mbuild.clip_path(tmp_path, 'mini-test-00001', 'Hello.', v)
    assert p != mbuild.clip_path(tmp_path, 'mini-test-00001', 'Hello.', mbuild.Voicing('en-us', 175, 51))
    assert p != mbuild.clip_path(tmp_path, 'mini-test-00001', 'Hello!', v)


def test_espeak_pitch_is_part_of_the_cache_key():
    assert cache_key(EspeakTTS()) == 'espeak:voice=en-us,rate=175'   # unchanged for caches made before pitch
    assert cache_key(EspeakTTS('en-us+f2', 160, 65)) == 'espeak:voice=en-us+f2,rate=160,pitch=65'
    with pytest.raises(ValueError, match='pitch 101'):
        EspeakTTS(pitch=101)


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_hf_format_build_with_espeak(tmp_path):
    """Two items per split spoken by espeak-ng: the schema validates with every clip decoded, the held-out voice
    speaks the test, trainer.data reads it, and a rebuild reuses every clip."""
    from trainer.data import prepare_grpo_dataset
    out = tmp_path / 'mini'
    dsd = mbuild.build_world_dataset(out, SMALL, max_items=2)
    assert list(dsd) == list(SPLITS) and all(len(dsd[s]) == 2 for s in SPLITS)
    for split in SPLITS:
        validate_dataset(dsd[split], f'mini[{split}]', check_audio=True)
    test = generate_world(SMALL).splits['test']
    row = dsd['test'][0]
    assert row['key'] == test[0].key and row['question'] == test[0].question
    assert row['options'] == list(test[0].options) and row['answer_index'] == test[0].answer_index
    assert row['thinking'] == test[0].thinking and row['subject'] == test[0].template
    assert row['source'] == 'miniature' and row['tts_voice'] == mbuild.HELD_OUT_VOICE
    wav = load_audio(audio_undecoded(dsd['test'])[0]['audio'])   # 16 kHz mono float32
    assert len(wav) > 16000 and np.abs(wav).max() > 0.01
    assert all(v != mbuild.HELD_OUT_VOICE for v in dsd['train']['tts_voice'])
    report = json.loads((out / 'report.json').read_text())
    assert report['clips_made'] == 6 and report['clips_reused'] == 0 and report['row_limit'] == 2
    assert report['voices']['test'] == {mbuild.HELD_OUT_VOICE: 2}
    with pytest.raises(FileExistsError):
        mbuild.build_world_dataset(out, SMALL, max_items=2)
    mbuild.build_world_dataset(out, SMALL, max_items=2, overwrite=True)
    report = json.loads((out / 'report.json').read_text())
    assert report['clips_made'] == 0 and report['clips_reused'] == 6
    jsonl = prepare_grpo_dataset(str(out / 'hf'), tmp_path / 'grpo')
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines()]
    assert len(rows) == 2 and rows[0]['tars_key'] == dsd['train'][0]['key']


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_text_only_build_has_no_audio(tmp_path):
    dsd = mbuild.build_world_dataset(tmp_path / 'text', SMALL, speech=False, max_items=3)
    assert 'audio' not in dsd['test'].column_names and len(dsd['validation']) == 3
    validate_dataset(dsd['train'], 'mini[train]', require_audio=False)

# --- the tokenizer ---------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory):
    return mtok.tokenizer_dir(cache_dir=tmp_path_factory.mktemp('cache'))


@pytest.fixture(scope='module')
def tok(tok_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_tokenizer_loads_as_qwen2_with_small_special_ids(tok, tok_dir):
    assert type(tok).__name__ == 'Qwen2Tokenizer'
    assert len(tok) <= 4096
    assert tok.eos_token == '<|im_end|>' and tok.pad_token == '<|endoftext|>' and tok.audio_token == '<|AUDIO|>'
    for i, token in enumerate(mtok.SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == i
        assert tok.encode(token, add_special_tokens=False) == [i]        # one id, kept whole
    assert tok.convert_tokens_to_ids('<|AUDIO|>') == 3 and tok.convert_tokens_to_ids('<|im_end|>') == 2
    newline = tok.encode('\n', add_special_tokens=False)
    assert tok.encode('Ann<|im_end|>\n<|audio_bos|><|AUDIO|><|audio_eos|>', add_special_tokens=False) == (
        tok.encode('Ann', add_special_tokens=False) + [2] + newline + [4, 3, 5])
    for role in ('system', 'user', 'assistant'):   # the Omni config names user_token_id
        assert len(tok.encode(role, add_special_tokens=False)) == 1
    # the cache: the same recipe gives the same folder without a rebuild
    stamp = (tok_dir / 'tokenizer.json').stat().st_mtime_ns
    assert mtok.tokenizer_dir(cache_dir=tok_dir.parent.parent) == tok_dir
    assert (tok_dir / 'tokenizer.json').stat().st_mtime_ns == stamp


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_tokenizer_round_trips_every_world_sentence(tok, tok_dir, world):
    from tokenizers import Tokenizer
    texts = sorted({s for item in world.items() for s in (item.question, *item.options, item.thinking,
                                                          item.prompt_for_tts, item.systhink_answer)})
    ids = tok(texts, add_special_tokens=False)['input_ids']
    assert tok.batch_decode(ids) == texts
    raw = Tokenizer.from_file(str(tok_dir / 'tokenizer.json'))   # loading keeps the trained pipeline
    assert [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)] == ids
    assert max(max(i) for i in ids) < len(tok)
    # whole conversations, special tokens included
    item = world.splits['test'][0]
    for conv in mtok.item_conversations(item.prompt_for_tts, item.systhink_answer):
        chat = tok.apply_chat_template(conv, tokenize=False)
        assert chat == mtok.render_chat(conv)
        assert tok.decode(tok.encode(chat, add_special_tokens=False)) == chat


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_chat_template_renders(tok):
    messages = [{'role': 'user', 'content': 'Ann has 3 apples.'}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        '<|im_start|>system\n' + QWEN2_5_OMNI_SYSTEM + '<|im_end|>\n<|im_start|>user\nAnn has 3 apples.<|im_end|>\n'
        '<|im_start|>assistant\n')
    messages = [{'role': 'system', 'content': prompts.SYSTHINK_SYSTEM},
                {'role': 'user', 'content': [{'type': 'audio', 'audio': 'x.wav'}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ('<|im_start|>system\n' + prompts.SYSTHINK_SYSTEM + '<|im_end|>\n<|im_start|>user\n'
                    '<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>\n<|im_start|>assistant\n')
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    newline = tok.encode('\n', add_special_tokens=False)
    assert ids[:2] == [1, tok.convert_tokens_to_ids('system')]
    assert ids[-8:] == [4, 3, 5, 2, *newline, 1, tok.convert_tokens_to_ids('assistant'), *newline]


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_an_omni_processor_builds_on_the_tokenizer(tok):
    """A Qwen2_5OmniProcessor on the small tokenizer expands one second of audio into 25 <|AUDIO|> ids."""
    from transformers import (Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
                              WhisperFeatureExtractor)
    from scripts.recipes.tiny_models import QWEN2_5_OMNI_CHAT_TEMPLATE
    vision = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2)
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
                                 padding_value=0.0, return_attention_mask=True)
    proc = Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(**vision),
                                video_processor=Qwen2VLVideoProcessor(**vision), feature_extractor=fe,
                                tokenizer=tok, chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE)
    text = proc.apply_chat_template([{'role': 'user', 'content': [{'type': 'audio', 'audio': 'x.wav'}]}],
                                    tokenize=False, add_generation_prompt=True)
    out = proc(text=[text], audio=[np.zeros(16000, dtype=np.float32)], return_tensors='np')
    ids = out['input_ids'][0].tolist()
    assert ids.count(3) == 25 and max(ids) < len(tok)
