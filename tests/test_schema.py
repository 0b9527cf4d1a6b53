"""trainer/schema.py: audio reading, loading and row validation (design.md section 2)."""
import logging

import datasets
import numpy as np
import pytest
import soundfile as sf

from trainer.schema import (AudioError, SchemaError, encode_wav_bytes, load_audio, load_hf_dataset,
                            rows_to_dataset, schema_error, validate_dataset)


def sine(freq=440.0, seconds=1.0, sr=16000, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x, sr):
    spec = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


def make_rows(n=3):
    wav = encode_wav_bytes(sine())
    return [{
        'key': f"q{i}", 'question': f"Question {i}?", 'options': ['red', 'green', 'blue', 'black'],
        'answer_index': i % 4, 'prompt_for_tts': f"Question {i}?\n\nOption A: red",
        'audio': {'bytes': wav, 'path': f"q{i}.wav"}, 'source': 'toy', 'subject': 'colours',
    } for i in range(n)]


def broken(field, value, index=1):
    rows = make_rows()
    rows[index][field] = value
    return rows_to_dataset(rows)


def test_good_rows_pass_and_audio_column_is_audio():
    ds = rows_to_dataset(make_rows())
    assert isinstance(ds.features['audio'], datasets.Audio)
    assert ds.features['audio'].sampling_rate == 16000
    validate_dataset(ds, 'toy')


def test_missing_column_names_dataset_and_column():
    ds = rows_to_dataset(make_rows()).remove_columns('prompt_for_tts')
    with pytest.raises(SchemaError, match=r"^toy: missing column 'prompt_for_tts' \(have: key, question"):
        validate_dataset(ds, 'toy')


def test_audio_column_optional_when_not_required():
    ds = rows_to_dataset(make_rows()).remove_columns('audio')
    validate_dataset(ds, 'toy', require_audio=False)
    with pytest.raises(SchemaError, match="missing column 'audio'"):
        validate_dataset(ds, 'toy')


def test_corrupt_audio_bytes():
    ds = broken('audio', {'bytes': b'definitely not a wav file', 'path': 'q1.wav'})
    with pytest.raises(AudioError, match=r"^toy: row key='q1': field 'audio': cannot decode audio"):
        validate_dataset(ds, 'toy')
    validate_dataset(ds, 'toy', check_audio=False)   # the cheap check does not decode


def test_missing_audio_file_path(tmp_path):
    missing = str(tmp_path / 'nowhere.wav')
    ds = broken('audio', {'bytes': None, 'path': missing}, index=2)
    with pytest.raises(AudioError) as e:
        validate_dataset(ds, 'toy')
    assert str(e.value).startswith("toy: row key='q2': field 'audio':")
    assert missing in str(e.value)


def test_answer_index_out_of_range_exact_message():
    ds = broken('answer_index', 4)
    with pytest.raises(SchemaError) as e:
        validate_dataset(ds, 'toy')
    assert str(e.value) == "toy: row key='q1': field 'answer_index': 4 not in range(0, 4)"


def test_negative_answer_index():
    with pytest.raises(SchemaError, match="field 'answer_index': -1 not in range"):
        validate_dataset(broken('answer_index', -1), 'toy')


def test_empty_options():
    with pytest.raises(SchemaError, match=r"^toy: row key='q1': field 'options':"):
        validate_dataset(broken('options', []), 'toy')


def test_blank_option():
    with pytest.raises(SchemaError, match=r"field 'options': option 2 must be a non-empty string"):
        validate_dataset(broken('options', ['a', 'b', '  ', 'd']), 'toy')


def test_duplicate_key():
    rows = make_rows(4)
    rows[3]['key'] = 'q1'
    with pytest.raises(SchemaError) as e:
        validate_dataset(rows_to_dataset(rows), 'toy')
    msg = str(e.value)
    assert msg.startswith("toy: row key='q1': field 'key': duplicate key")
    assert '#1' in msg and '#3' in msg


def test_empty_key_falls_back_to_row_index():
    with pytest.raises(SchemaError) as e:
        validate_dataset(broken('key', '', index=2), 'toy')
    assert str(e.value).startswith("toy: row #2: field 'key':")


def test_schema_error_format():
    assert str(schema_error('ds', 'k', 'f', 'bad')) == "ds: row key='k': field 'f': bad"
    assert str(schema_error('ds', None, 'f', 'bad', index=12)) == "ds: row #12: field 'f': bad"


def test_load_audio_resamples_22050_sine_to_16k(tmp_path):
    x = sine(freq=1000.0, seconds=2.0, sr=22050)
    path = tmp_path / 'tone.wav'
    sf.write(path, x, 22050, subtype='PCM_16')
    for value in (str(path), {'bytes': path.read_bytes(), 'path': None}, {'array': x, 'sampling_rate': 22050}):
        y = load_audio(value)
        assert y.dtype == np.float32 and y.ndim == 1
        assert len(y) == 32000                     # 2 s at 16 kHz (44100 * 320/441)
        assert abs(dominant_freq(y, 16000) - 1000.0) <= 1.0
        assert 0.3 < np.abs(y).max() < 0.6        # amplitude 0.5 survives resampling


def test_load_audio_stereo_to_mono_and_errors(tmp_path):
    left, right = sine(300.0), sine(300.0, amp=0.1)
    path = tmp_path / 'stereo.wav'
    sf.write(path, np.stack([left, right], axis=1), 16000)
    y = load_audio(str(path))
    assert y.shape == (16000,)
    assert abs(np.abs(y).max() - 0.3) < 0.01      # mean of the two channels
    empty = tmp_path / 'empty.wav'
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty audio"):
        load_audio(str(empty))
    with pytest.raises(AudioError, match="neither bytes nor path"):
        load_audio({'bytes': None, 'path': None})


def test_load_hf_dataset_split_fallback_and_undecoded_audio(tmp_path, caplog):
    ds = rows_to_dataset(make_rows())
    datasets.DatasetDict(test=ds).save_to_disk(str(tmp_path / 'only_test'))
    with caplog.at_level(logging.WARNING):
        got = load_hf_dataset(str(tmp_path / 'only_test'))
    assert "using 'test'" in caplog.text
    assert got.features['audio'].decode is False
    assert isinstance(got[0]['audio']['bytes'], bytes)
    validate_dataset(got, 'only_test')

    datasets.DatasetDict(validation=ds).save_to_disk(str(tmp_path / 'only_val'))
    with pytest.raises(SchemaError, match=r"no split 'train' \(available: validation\)"):
        load_hf_dataset(str(tmp_path / 'only_val'))
