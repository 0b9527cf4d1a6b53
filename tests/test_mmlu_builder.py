"""scripts/dataset_building/mmlu.py: text processing, selection and the speech-set build (docs/original.md §5.1)."""
import json

import datasets
import numpy as np
import pytest

from scripts.dataset_building.mmlu import (TTS_CACHE_FILE, build_prompt_for_tts, build_speech_set, make_row,
                                           mmlu_rows, read_mmlu_source, rewrite_blanks, select_rows, wav_name)
from tests.dataset_fixtures import write_source
from trainer.schema import load_audio, load_hf_dataset, validate_dataset
from scripts.dataset_building.tts import EspeakTTS, TTSUnavailable

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


@pytest.mark.slow  # the slow tier (tests/conftest.py)
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


@pytest.mark.slow  # the slow tier (tests/conftest.py)
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

# -----------------------------------------------------------------------------
# the clip cache belongs to one backend, voice and rate; an unreachable backend stops the build


def two_question_source(tmp_path):
    return write_source(tmp_path / 'mmlu.jsonl', ["What colour is the sky?", "How many legs has a cat?"])


def clips(out):
    return {f.name: f.read_bytes() for f in sorted((out / 'wav').glob('*.wav'))}


def closed_loopback_url():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()                                                   # nothing listens there now
    return f"http://127.0.0.1:{port}/unreachable"


def test_rebuild_with_unreachable_http_fails_naming_the_url(tmp_path, capsys):
    from scripts.dataset_building.mmlu import main
    src, out, url = two_question_source(tmp_path), tmp_path / 'set', closed_loopback_url()
    main(['--out', str(out), '--rows', '2', '--source', str(src)])
    summary = (out / 'summary.json').read_text()
    assert json.loads(summary)['tts'] == 'espeak:en-us' and json.loads(summary)['synthesised'] == 2
    before = clips(out)
    capsys.readouterr()

    with pytest.raises(SystemExit) as e:
        main(['--out', str(out), '--rows', '2', '--source', str(src), '--overwrite', '--tts', 'http', '--tts_url', url])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: TTS server {url} unreachable: ") and err.count("\n") == 1
    assert "refused" in err
    assert clips(out) == before and (out / 'summary.json').read_text() == summary   # nothing relabelled
    assert json.loads((out / 'wav' / TTS_CACHE_FILE).read_text())['cache_key'] == 'espeak:voice=en-us,rate=175'

    with pytest.raises(SystemExit):                             # a fresh folder: stops before any clip
        main(['--out', str(tmp_path / 'fresh'), '--rows', '2', '--source', str(src), '--tts', 'http', '--tts_url', url])
    assert capsys.readouterr().err.startswith(f"error: TTS server {url} unreachable: ")
    assert not list((tmp_path / 'fresh' / 'wav').glob('*.wav')) and not (tmp_path / 'fresh' / 'hf').exists()


def test_another_espeak_voice_or_rate_does_not_reuse_the_cache(tmp_path):
    src, out = two_question_source(tmp_path), tmp_path / 'set'
    build_speech_set(out, n_rows=2, source_path=src, tts=EspeakTTS())
    before = clips(out)
    assert len(before) == 2
    # rate None speaks at espeak's 175 wpm: same key, the cache is reused
    build_speech_set(out, n_rows=2, source_path=src, tts=EspeakTTS(rate=175), overwrite=True)
    assert json.loads((out / 'summary.json').read_text())['reused_from_cache'] == 2
    for other, key in ((EspeakTTS(rate=260), 'espeak:voice=en-us,rate=260'),
                       (EspeakTTS(voice='en'), 'espeak:voice=en,rate=175')):
        with pytest.raises(ValueError) as e:
            build_speech_set(out, n_rows=2, source_path=src, tts=other, overwrite=True)
        assert str(e.value) == (f"{out / 'wav'} holds clips voiced by TTS 'espeak:voice=en-us,rate=175', but this "
                                f"run uses TTS '{key}'; build into another output folder or delete {out / 'wav'}")
    assert clips(out) == before

    fast = CountingTTS(EspeakTTS(rate=260))
    fast.cache_key = 'espeak:voice=en-us,rate=260'
    build_speech_set(tmp_path / 'fast', n_rows=2, source_path=src, tts=fast)
    assert fast.calls == 2                                      # synthesised afresh, in its own cache
    summary = json.loads((tmp_path / 'fast' / 'summary.json').read_text())
    assert summary['synthesised'] == 2 and summary['tts_cache_key'] == 'espeak:voice=en-us,rate=260'
    for name, data in clips(tmp_path / 'fast').items():
        assert len(data) < len(before[name])                    # faster speech, shorter clip

    (out / 'wav' / TTS_CACHE_FILE).unlink()                     # clips from before the cache recorded its backend
    with pytest.raises(ValueError, match="voiced by an unrecorded TTS backend"):
        build_speech_set(out, n_rows=2, source_path=src, tts=EspeakTTS(), overwrite=True)


def test_unknown_espeak_voice_stops_before_any_clip(tmp_path):
    with pytest.raises(TTSUnavailable, match="unknown voice 'xx-nope'"):
        build_speech_set(tmp_path / 'set', n_rows=2, source_path=two_question_source(tmp_path),
                         tts=EspeakTTS(voice='xx-nope'))
    assert not list((tmp_path / 'set' / 'wav').glob('*.wav'))
