"""scripts/dataset_building/mmlu.py: text processing, selection and the speech-set build (reference 5.1)."""
import json

import datasets
import numpy as np
import pytest

from scripts.dataset_building.mmlu import (build_prompt_for_tts, build_speech_set, make_row, mmlu_rows,
                                           read_mmlu_source, rewrite_blanks, select_rows, wav_name)
from tests.dataset_fixtures import write_source
from trainer.schema import load_audio, load_hf_dataset, validate_dataset
from trainer.tts import EspeakTTS

# -----------------------------------------------------------------------------
# text


def test_rewrite_blanks_trailing_blank_with_period():
    assert rewrite_blanks("The capital of France is ____.") == "The capital of France is  what?"


def test_rewrite_blanks_single_blank():
    assert rewrite_blanks("____ is the largest planet.") == " what  is the largest planet."


def test_rewrite_blanks_several_blanks():
    assert rewrite_blanks("A __ and a ___ met a _____ today") == \
        "A  first blank  and a  second blank  met a  third blank  today"


def test_rewrite_blanks_trailing_then_one_more():
    # the trailing blank is rewritten first, leaving a single blank -> " what "
    assert rewrite_blanks("__ is to ___.") == " what  is to  what?"


def test_rewrite_blanks_ordinals_cycle_after_ten():
    out = rewrite_blanks(" ".join(["__"] * 11))
    assert out.count(" first blank ") == 2 and out.count(" tenth blank ") == 1
    assert out.endswith(" first blank ")


def test_rewrite_blanks_no_blank_unchanged():
    for q in ("What is 2+2?", "Is snake_case_name a _ blank?", ""):
        assert rewrite_blanks(q) == q


def test_build_prompt_for_tts_exact():
    assert build_prompt_for_tts("Q?", ["a", "b", "c", "d"]) == \
        "Q?\n\nOption A: a\nOption B: b\nOption C: c\nOption D: d"
    assert build_prompt_for_tts("Yes or no?", ["yes", "no"]) == "Yes or no?\n\nOption A: yes\nOption B: no"


def test_make_row_and_length_filter(tmp_path):
    # "Q?" -> "Q?\n\n" (4) + 4 lines of "Option X: y" (11 each) + 3 newlines = 51 characters;
    # the second question is 10 longer (61); "The  what  sky." (15) gives 15 + 2 + 44 + 3 = 64
    src = write_source(tmp_path / 'mmlu.jsonl', ["Q?", "Q?" + "x" * 10, "The __ sky."])
    stats = {}
    rows = list(mmlu_rows(max_chars=51, stats=stats, path=src))
    assert [r['key'] for r in rows] == ['mmlu@1']        # header dropped, numbering from 1
    assert stats == {'source_rows': 3, 'dropped_by_length': 2}
    assert len(rows[0]['prompt_for_tts']) == 51
    assert [r['key'] for r in mmlu_rows(max_chars=63, path=src)] == ['mmlu@1', 'mmlu@2']
    assert [r['key'] for r in mmlu_rows(max_chars=64, path=src)] == ['mmlu@1', 'mmlu@2', 'mmlu@3']
    assert [r['key'] for r in mmlu_rows(max_chars=50, path=src)] == []

    row = make_row(3, read_mmlu_source(src)[2])
    assert row == {
        'key': 'mmlu@3', 'question': "The __ sky.", 'options': ['a', 'b', 'c', 'd'], 'answer_index': 2,
        'question_for_tts': "The  what  sky.",
        'prompt_for_tts': "The  what  sky.\n\nOption A: a\nOption B: b\nOption C: c\nOption D: d",
        'prompt_for_tts_tn': "the what sky option a a option b b option c c option d d",
        'source': 'mmlu', 'subject': 'toys',
    }


def test_prompt_for_tts_tn_is_lower_case_and_punctuation_free():
    from scripts.dataset_building.mmlu import text_normalise
    assert text_normalise("Who's   the U.S. president?\n\nOption A: Don't know\nOption B: 2+2") == \
        "whos the us president option a dont know option b 2+2"   # the original's jiwer chain
    assert text_normalise("ALL CAPS, (really)!") == "all caps really"


def test_real_source_is_clean():
    rows = read_mmlu_source()
    assert len(rows) == 14044 - 2                        # 14044 lines, 2 embedded header rows
    assert {r['correct_answer'] for r in rows} == set('ABCD')


def test_select_rows_is_seeded():
    rows = [{'key': str(i)} for i in range(50)]
    a, b, c = select_rows(rows, 10, 0), select_rows(rows, 10, 0), select_rows(rows, 10, 1)
    assert a == b and a != c and len(a) == 10 and len({r['key'] for r in a}) == 10


def test_wav_name():
    assert wav_name('mmlu@12') == 'mmlu@12.wav'
    assert wav_name('a/b c') == 'a_b_c.wav'

# -----------------------------------------------------------------------------
# speech set


class CountingTTS:
    def __init__(self, inner):
        self.inner, self.calls, self.name = inner, 0, 'counting'

    def synthesize(self, text):
        self.calls += 1
        return self.inner.synthesize(text)


class FailingTTS:
    """Fails every time for one text; speaks a short tone otherwise."""

    def __init__(self, bad_text):
        self.bad_text, self.bad_calls, self.name = bad_text, 0, 'failing'

    def synthesize(self, text):
        if text == self.bad_text:
            self.bad_calls += 1
            raise RuntimeError("engine exploded")
        return (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)


def all_keys(dsd):
    return [k for split in ('train', 'test') if split in dsd for k in dsd[split]['key']]


def test_build_speech_set_roundtrip_and_cache(tmp_path):
    out = tmp_path / 'set'
    tts = CountingTTS(EspeakTTS())
    build_speech_set(out, n_rows=6, seed=3, tts=tts)
    assert tts.calls == 6
    assert len(list((out / 'wav').glob('*.wav'))) == 6

    dsd = datasets.load_from_disk(str(out / 'hf'))
    assert list(dsd) == ['train']
    ds = load_hf_dataset(str(out / 'hf'))
    validate_dataset(ds, 'mmlu6')
    keys = ds['key']
    assert len(keys) == 6 and len(set(keys)) == 6 and all(k.startswith('mmlu@') for k in keys)
    for row in ds:
        assert len(row['prompt_for_tts']) <= 300
        assert row['options'][row['answer_index']]
        x = load_audio(row['audio'], target_sr=16000)
        assert x.ndim == 1 and len(x) / 16000 > 0.5
        assert np.sqrt(np.mean(x ** 2)) > 0.01
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['rows_kept'] == 6 and summary['synthesised'] == 6 and summary['failed'] == []
    assert summary['audio_seconds'] > 3.0

    with pytest.raises(FileExistsError, match="overwrite"):
        build_speech_set(out, n_rows=6, seed=3, tts=tts)

    # rebuild: same keys in the same order, every clip from the cache, last 2 rows become 'test'
    tts2 = CountingTTS(EspeakTTS())
    dsd2 = build_speech_set(out, n_rows=6, seed=3, tts=tts2, test_rows=2, overwrite=True)
    assert tts2.calls == 0
    assert {k: len(v) for k, v in dsd2.items()} == {'train': 4, 'test': 2}
    assert all_keys(dsd2) == keys
    assert json.loads((out / 'summary.json').read_text())['reused_from_cache'] == 6

    # the saved set holds the audio bytes itself
    for f in (out / 'wav').glob('*.wav'):
        f.unlink()
    validate_dataset(load_hf_dataset(str(out / 'hf'), split='test'), 'mmlu6-test')


def test_failing_tts_row_is_retried_reported_and_skipped(tmp_path):
    chosen = select_rows(mmlu_rows(max_chars=300), 5, 7)
    bad = chosen[2]
    tts = FailingTTS(bad['prompt_for_tts'])
    dsd = build_speech_set(tmp_path / 'set', n_rows=5, seed=7, tts=tts)
    assert tts.bad_calls == 3                            # first try + 2 retries
    summary = json.loads((tmp_path / 'set' / 'summary.json').read_text())
    assert [f['key'] for f in summary['failed']] == [bad['key']]
    assert 'engine exploded' in summary['failed'][0]['error']
    assert summary['rows_kept'] == 4
    assert dsd['train']['key'] == [r['key'] for r in chosen if r is not bad]
    assert not (tmp_path / 'set' / 'wav' / wav_name(bad['key'])).exists()


def test_build_refuses_bad_test_rows(tmp_path):
    with pytest.raises(ValueError, match="test_rows"):
        build_speech_set(tmp_path / 'set', n_rows=3, test_rows=3, tts=FailingTTS(None))
