"""Speaker prompts for the HTTP TTS backend (docs/original.md §5.1 step 3): the set, its rotation, HttpTTS's
payload, the MMLU builder's tts_speaker column and its clip-cache guard. A local HTTP server stands in for
the CosyVoice2 service: it answers each request with a 24 kHz tone whose pitch depends on the reference
transcript, so the test can tell which speaker voiced a clip."""
import base64
import http.server
import io
import json
import zlib

import datasets
import numpy as np
import pytest
import soundfile as sf

from scripts.dataset_building.mmlu import SPEAKER_CACHE_FILE, build_speech_set, sidecar_path, wav_name
from tests.dataset_fixtures import local_http_server, tone, write_source
from trainer.schema import load_audio, load_hf_dataset, validate_dataset
from scripts.dataset_building.speaker_prompts import (SpeakerPrompt, SpeakerPromptError, SpeakerPromptSet,
                                                      question_number)
from scripts.dataset_building.tts import HttpTTS, get_tts

SPEAKERS = {'spk_a': "Hello there.", 'spk_b': "Good morning to you.", 'spk_c': "It is a fine day."}


def pitch(ref_text):
    return 300 + zlib.crc32(ref_text.encode()) % 500


def write_speaker_dir(root, speakers=SPEAKERS):
    root.mkdir(parents=True, exist_ok=True)
    for i, (sid, text) in enumerate(speakers.items()):
        sf.write(str(root / f"{sid}.wav"), tone(200 + 100 * i), 16000)
        (root / f"{sid}.txt").write_text(text + "\n")
    return root


class _Server(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        type(self).received.append(body)
        t = np.arange(int(0.4 * 24000)) / 24000
        buf = io.BytesIO()
        sf.write(buf, 0.3 * np.sin(2 * np.pi * pitch(body.get('reference_text', '')) * t), 24000, format='WAV')
        data = buf.getvalue()
        self.send_response(200)
        self.send_header('Content-Type', 'audio/wav')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def server_url():
    _Server.received = []
    with local_http_server(_Server) as url:
        yield url

# -----------------------------------------------------------------------------
# the set


def test_question_number():
    assert question_number('mmlu@123') == 123 and question_number('obqa_7') == 7
    assert question_number('no-digits') == zlib.crc32(b'no-digits')


def test_folder_set_order_and_rotation(tmp_path):
    root = write_speaker_dir(tmp_path / 'spk')
    (root / 'notes.md').write_text("ignored")
    plain = SpeakerPromptSet.from_dir(root, shuffle_seed=None)
    assert [p.id for p in plain] == ['spk_a', 'spk_b', 'spk_c']                  # path order
    assert plain[1] == SpeakerPrompt('spk_b', "Good morning to you.", str(root / 'spk_b.wav'))
    assert [plain.pick(f"mmlu@{n}").id for n in (0, 1, 2, 3, 7)] == ['spk_a', 'spk_b', 'spk_c', 'spk_a', 'spk_b']

    shuffled = SpeakerPromptSet.load(root)                                       # seed 42 by default
    # the permutation datasets' shuffle(seed=42) applies, as the original's speaker set
    order = datasets.Dataset.from_dict({'i': [0, 1, 2]}).shuffle(seed=42)['i']
    assert [p.id for p in shuffled] == [plain[i].id for i in order]
    assert shuffled.pick('mmlu@4').id == shuffled[1].id
    assert shuffled.fingerprint() != plain.fingerprint()
    assert SpeakerPromptSet.load(root).fingerprint() == shuffled.fingerprint()


def test_manifest_set(tmp_path):
    write_speaker_dir(tmp_path / 'clips')
    lines = [{'wav_path': 'clips/spk_b.wav', 'text': "Good morning to you.", 'key': 'B'},
             {'audio': str(tmp_path / 'clips' / 'spk_a.wav'), 'transcript': " Hello there. "}]
    (tmp_path / 'm.jsonl').write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    s = SpeakerPromptSet.load(tmp_path / 'm.jsonl', shuffle_seed=None)
    assert [(p.id, p.text) for p in s] == [('B', "Good morning to you."), ('spk_a', "Hello there.")]
    assert s[0].audio_path == str(tmp_path / 'clips' / 'spk_b.wav')             # relative to the manifest
    assert s.source == str(tmp_path / 'm.jsonl')


@pytest.mark.parametrize('case, message', [
    ('missing_clip', r"m\.jsonl, speaker 'x': prompt clip .*gone\.wav does not exist"),
    ('unreadable_clip', r"prompt clip .*bad\.wav is not readable audio"),
    ('not_json', r"m\.jsonl:2: not JSON"),
    ('no_text', r"m\.jsonl:1: no transcript"),
    ('no_audio', r"m\.jsonl:1: no clip path"),
    ('duplicate_id', r"speaker id 'x' used twice"),
    ('no_manifest', r"no such folder or manifest file"),
])
def test_manifest_errors_name_the_file(tmp_path, case, message):
    good = tmp_path / 'good.wav'
    sf.write(str(good), tone(300), 16000)
    (tmp_path / 'bad.wav').write_bytes(b'RIFF not really a wav file')
    lines = {
        'missing_clip': [json.dumps({'audio': 'gone.wav', 'text': 'hi', 'id': 'x'})],
        'unreadable_clip': [json.dumps({'audio': 'bad.wav', 'text': 'hi'})],
        'not_json': [json.dumps({'audio': 'good.wav', 'text': 'hi'}), "{oops"],
        'no_text': [json.dumps({'audio': 'good.wav', 'text': '  '})],
        'no_audio': [json.dumps({'text': 'hi'})],
        'duplicate_id': [json.dumps({'audio': 'good.wav', 'text': 'hi', 'id': 'x'})] * 2,
    }.get(case)
    path = tmp_path / ('m.jsonl' if lines is not None else 'absent.jsonl')
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpeakerPromptError, match=message):
        SpeakerPromptSet.load(path)


def test_folder_errors(tmp_path):
    root = write_speaker_dir(tmp_path / 'spk')
    (root / 'spk_b.txt').unlink()
    with pytest.raises(SpeakerPromptError, match=r"spk_b\.wav has no transcript spk_b\.txt"):
        SpeakerPromptSet.from_dir(root)
    (root / 'spk_b.txt').write_text("\n")
    with pytest.raises(SpeakerPromptError, match=r"speaker 'spk_b' .* has an empty transcript"):
        SpeakerPromptSet.from_dir(root)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SpeakerPromptError, match="no speaker prompt found"):
        SpeakerPromptSet.from_dir(tmp_path / 'empty')

# -----------------------------------------------------------------------------
# HttpTTS


def test_http_tts_sends_the_picked_speaker(server_url, tmp_path):
    root = write_speaker_dir(tmp_path / 'spk')
    tts = get_tts('http', url=server_url, speakers=root)                       # a path is loaded
    sp = tts.speaker_for('mmlu@5')
    assert sp == tts.speakers.pick('mmlu@5')
    x = tts.synthesize("Say hi.", speaker=sp)
    assert x.dtype == np.float32 and abs(len(x) - 0.4 * 16000) <= 2
    assert _Server.received[-1] == {'text': "Say hi.", 'reference_text': sp.text,
                                    'reference_audio_base64': base64.b64encode((root / f"{sp.id}.wav").read_bytes())
                                    .decode()}
    with pytest.raises(ValueError, match="speaker_for"):
        tts.synthesize("No speaker given.")
    (root / f"{sp.id}.wav").unlink()                                           # vanished after loading
    with pytest.raises(SpeakerPromptError, match=f"cannot read prompt clip .*{sp.id}.wav"):
        tts.synthesize("Again.", speaker=sp)
    with pytest.raises(ValueError, match="not both"):
        HttpTTS(server_url, speaker_prompt=("x", b"RIFF"), speakers=root)
    with pytest.raises(SpeakerPromptError, match="missing.wav"):
        HttpTTS(server_url, speaker_prompt=("x", str(tmp_path / 'missing.wav')))

# -----------------------------------------------------------------------------
# the MMLU builder


def write_mmlu(tmp_path, n=5):
    return write_source(tmp_path / 'mmlu.jsonl', [f"Question number {i}?" for i in range(1, n + 1)])


def test_builder_records_each_rows_speaker(server_url, tmp_path):
    src = write_mmlu(tmp_path)
    speakers = SpeakerPromptSet.from_dir(write_speaker_dir(tmp_path / 'spk'))
    out = tmp_path / 'set'
    build_speech_set(out, n_rows=4, seed=1, tts=HttpTTS(server_url, speakers=speakers), source_path=src)
    ds = load_hf_dataset(str(out / 'hf'))
    validate_dataset(ds, 'speakers')
    assert len(ds) == 4 and len(_Server.received) == 4
    sent = {b['text']: b['reference_text'] for b in _Server.received}
    for row in ds:
        n = int(row['key'].split('@')[1])
        expected = speakers[n % 3]
        assert row['tts_speaker'] == expected.id and sent[row['prompt_for_tts']] == expected.text
        x = load_audio(row['audio'])
        f = np.fft.rfftfreq(len(x), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(x)))]
        assert abs(f - pitch(expected.text)) < 5                                 # that speaker's clip
    assert json.loads((out / 'wav' / SPEAKER_CACHE_FILE).read_text())['fingerprint'] == speakers.fingerprint()
    assert json.loads((out / 'summary.json').read_text())['speakers'] == {
        'source': str(tmp_path / 'spk'), 'size': 3, 'shuffle_seed': 42, 'fingerprint': speakers.fingerprint()}

    # resume with the same set: nothing re-synthesised, same speakers
    _Server.received = []
    again = build_speech_set(out, n_rows=4, seed=1, tts=HttpTTS(server_url, speakers=speakers), source_path=src,
                             overwrite=True)['train']
    assert _Server.received == [] and again['tts_speaker'] == ds['tts_speaker']

    # another set (or none) over the same clip cache is refused
    other = SpeakerPromptSet.from_dir(tmp_path / 'spk', shuffle_seed=None)
    with pytest.raises(ValueError, match="holds clips voiced with speaker set"):
        build_speech_set(out, n_rows=4, seed=1, tts=HttpTTS(server_url, speakers=other), source_path=src,
                         overwrite=True)
    with pytest.raises(ValueError, match="but this run uses no speaker set"):
        build_speech_set(out, n_rows=4, seed=1, tts=HttpTTS(server_url), source_path=src, overwrite=True)


class FixedASR:
    name = 'fixed'

    def transcribe(self, wav):
        return "something else entirely"


def test_builder_with_asr_validation_keeps_the_speaker(server_url, tmp_path):
    src = write_mmlu(tmp_path)
    speakers = SpeakerPromptSet.from_dir(write_speaker_dir(tmp_path / 'spk'))
    out = tmp_path / 'set'
    dsd = build_speech_set(out, n_rows=3, seed=2, tts=HttpTTS(server_url, speakers=speakers), source_path=src,
                           validate_with_asr=True, asr=FixedASR(), max_retries=2, wer_threshold=1.01)
    ds = dsd['train'].remove_columns('audio')
    assert dsd['train'].features['tts_speaker'] == datasets.Value('string')
    for row in ds:
        sp = speakers.pick(row['key'])
        assert row['tts_speaker'] == sp.id and row['tts_wer'] == 1.0
        assert json.loads(sidecar_path(out / 'wav' / wav_name(row['key'])).read_text())['speaker'] == sp.id
    # every attempt of a row used the row's speaker (the server saw 2 identical requests -> stopped at 2)
    per_text = {}
    for b in _Server.received:
        per_text.setdefault(b['text'], set()).add(b['reference_text'])
    assert all(len(v) == 1 for v in per_text.values()) and len(_Server.received) == 6


def test_cli_speakers_needs_http(tmp_path, capsys):
    from scripts.dataset_building import mmlu
    with pytest.raises(SystemExit) as e:
        mmlu.main(['--out', str(tmp_path / 'x'), '--speakers', str(tmp_path)])
    assert e.value.code == 2 and "--speakers needs --tts http" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mmlu.main(['--out', str(tmp_path / 'x'), '--tts', 'http', '--tts_url', 'http://127.0.0.1:9/x',
                   '--speakers', str(tmp_path / 'nope')])
    assert e.value.code == 2 and "no such folder or manifest file" in capsys.readouterr().err
