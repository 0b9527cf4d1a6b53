"""trainer/schema.py: audio reading, loading and row validation (docs/formats.md §1)."""
import io
import json
import logging
import struct

import datasets
import numpy as np
import pytest
import soundfile as sf

from trainer.schema import (DEFAULT_MAX_AUDIO_SECONDS, AudioError, AudioTooLongError, SchemaError,
                            encode_wav_bytes, load_audio, load_hf_dataset, rows_to_dataset, schema_error,
                            validate_dataset)


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


# -----------------------------------------------------------------------------
# audio that is not what it claims: truncated files, over-long clips


def half_cut_wav():
    """A 1 s 16-bit WAV (44-byte header, data chunk of 32000 bytes) cut in half, header intact."""
    data = encode_wav_bytes(sine())
    assert data[36:40] == b'data' and struct.unpack('<I', data[40:44])[0] == 32000 and len(data) == 32044
    return data[:len(data) // 2]                    # 16022 bytes: 15978 of the declared 32000 data bytes


def test_soundfile_alone_reads_a_half_cut_wav_as_a_shorter_clip():
    x, sr = sf.read(io.BytesIO(half_cut_wav()), dtype='float32')   # why schema.wav_truncation exists
    assert sr == 16000 and len(x) == 15978 // 2


def test_half_cut_wav_is_rejected_as_bytes_and_as_path(tmp_path):
    cut = half_cut_wav()
    problem = "truncated WAV: the data chunk declares 32000 bytes but only 15978 are present (50%)"
    ds = broken('audio', {'bytes': cut, 'path': 'q1.wav'})
    with pytest.raises(AudioError) as e:
        validate_dataset(ds, 'toy')
    assert str(e.value) == f"toy: row key='q1': field 'audio': corrupt audio bytes (path 'q1.wav'): {problem}"

    path = tmp_path / 'cut.wav'
    path.write_bytes(cut)
    ds = broken('audio', {'bytes': None, 'path': str(path)}, index=2)
    with pytest.raises(AudioError) as e:
        validate_dataset(ds, 'toy')
    assert str(e.value) == f"toy: row key='q2': field 'audio': corrupt audio file {str(path)!r}: {problem}"
    with pytest.raises(AudioError, match="truncated WAV"):
        load_audio(str(path))                       # a bare path string too


def test_wav_chunk_walk_float_extra_chunks_and_unset_sizes():
    buf = io.BytesIO()
    sf.write(buf, sine(), 16000, format='WAV', subtype='FLOAT')   # float WAV: the `wave` module rejects it
    whole = buf.getvalue()
    assert len(load_audio({'bytes': whole, 'path': None})) == 16000
    with pytest.raises(AudioError, match="truncated WAV"):
        load_audio({'bytes': whole[:-4], 'path': None})            # one sample short

    pcm = encode_wav_bytes(sine())
    odd = b'LIST' + struct.pack('<I', 3) + b'abc' + b'\0'          # odd-sized chunk + pad byte before 'data'
    with_list = pcm[:4] + struct.pack('<I', len(pcm) - 8 + len(odd)) + pcm[8:36] + odd + pcm[36:]
    assert len(load_audio({'bytes': with_list, 'path': None})) == 16000
    with pytest.raises(AudioError, match="declares 32000 bytes but only 31998"):
        load_audio({'bytes': with_list[:-2], 'path': None})

    assert len(load_audio({'bytes': pcm + b'trailing junk!', 'path': None})) == 16000   # more than declared: fine
    streamed = pcm[:40] + struct.pack('<I', 0xFFFFFFFF) + pcm[44:]   # length left unset by a streaming writer
    assert len(load_audio({'bytes': streamed[:20044], 'path': None})) == 10000


def clip_rows(seconds):
    """Schema rows q0, q1, ... whose clips last the given seconds (a quiet tone, 16 kHz 16-bit WAV)."""
    rows = make_rows(len(seconds))
    for row, s in zip(rows, seconds, strict=True):
        row['audio'] = {'bytes': encode_wav_bytes(sine(seconds=s, amp=0.1)), 'path': None}
    return rows


def test_default_max_audio_is_60_seconds_and_a_61_second_clip_stops():
    assert DEFAULT_MAX_AUDIO_SECONDS == 60.0
    ds = rows_to_dataset(clip_rows([1.0, 61.0, 1.0]))
    with pytest.raises(AudioTooLongError) as e:
        validate_dataset(ds, 'toy', max_audio_seconds=DEFAULT_MAX_AUDIO_SECONDS)
    msg = str(e.value)
    assert msg.startswith("toy: field 'audio': 1 clip(s) longer than max_audio_seconds=60: keys 'q1' (61.0 s); ")
    assert "--drop_long_audio" in msg and "\n" not in msg
    assert validate_dataset(ds, 'toy') is not None   # no limit unless asked (builders)


def test_long_clips_listed_first_few_with_count_then_dropped(capsys):
    seconds = [0.3, 0.6, 0.3, 0.7, 0.8, 0.9, 0.6, 0.61, 0.2, 0.55]     # 7 clips over 0.5 s
    ds = rows_to_dataset(clip_rows(seconds))
    with pytest.raises(AudioTooLongError) as e:
        validate_dataset(ds, 'toy', max_audio_seconds=0.5)
    assert str(e.value).startswith("toy: field 'audio': 7 clip(s) longer than max_audio_seconds=0.5: keys 'q1' "
                                   "(0.6 s), 'q3' (0.7 s), 'q4' (0.8 s), 'q5' (0.9 s), 'q6' (0.6 s), ... (7 in all); ")
    kept = validate_dataset(ds, 'toy', max_audio_seconds=0.5, drop_long_audio=True)
    assert kept['key'] == ['q0', 'q2', 'q8']
    assert capsys.readouterr().err.strip() == (
        "toy: field 'audio': dropped 7 clip(s) longer than max_audio_seconds=0.5: keys 'q1' (0.6 s), 'q3' (0.7 s), "
        "'q4' (0.8 s), 'q5' (0.9 s), 'q6' (0.6 s), ... (7 in all)")
    with pytest.raises(AudioTooLongError, match="every row would be dropped"):
        validate_dataset(ds, 'toy', max_audio_seconds=0.1, drop_long_audio=True)
    assert validate_dataset(ds, 'toy', max_audio_seconds=0)['key'] == ds['key']   # 0: no limit
    assert validate_dataset(ds, 'toy', max_audio_seconds=0.5, check_audio=False)['key'] == ds['key']


def save_set(tmp_path, seconds):
    path = tmp_path / 'set'
    datasets.DatasetDict(train=rows_to_dataset(clip_rows(seconds))).save_to_disk(str(path))
    return str(path)


def test_prepare_cli_default_limit_stops_on_a_61_second_clip(tmp_path, capsys):
    from trainer.data import main
    data = save_set(tmp_path, [1.0, 61.0])
    capsys.readouterr()                              # save_to_disk's progress bar
    with pytest.raises(SystemExit) as e:
        main(['grpo', '--dataset', data, '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {data}: field 'audio': 1 clip(s) longer than max_audio_seconds=60: "
                          f"keys 'q1' (61.0 s); ")
    assert not (tmp_path / 'out' / 'grpo.jsonl').exists()


def test_prepare_cli_flags_lower_the_limit_and_drop(tmp_path, capsys):
    import inspect

    from trainer.data import main, prepare_grpo_dataset
    assert inspect.signature(prepare_grpo_dataset).parameters['max_audio_seconds'].default == 60.0
    data = save_set(tmp_path, [0.3, 0.9, 0.4])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(['grpo', '--dataset', data, '--out', str(tmp_path / 'a'), '--max_audio_seconds', '0.5'])
    assert "keys 'q1' (0.9 s)" in capsys.readouterr().err
    main(['grpo', '--dataset', data, '--out', str(tmp_path / 'b'), '--max_audio_seconds', '0.5', '--drop_long_audio'])
    assert "dropped 1 clip(s) longer than max_audio_seconds=0.5: keys 'q1' (0.9 s)" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / 'b' / 'grpo.jsonl').read_text().splitlines()]
    assert [r['tars_key'] for r in rows] == ['q0', 'q2'] and all(len(r['audios']) == 1 for r in rows)


def test_prepare_cli_rejects_a_half_cut_wav_file(tmp_path, capsys):
    from trainer.data import main
    cut = tmp_path / 'cut.wav'
    cut.write_bytes(half_cut_wav())
    rows = clip_rows([0.3, 0.3])
    rows[1]['audio'] = {'bytes': None, 'path': str(cut)}
    data = tmp_path / 'set'
    datasets.DatasetDict(train=rows_to_dataset(rows)).save_to_disk(str(data))   # embeds the file's bytes
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(['grpo', '--dataset', str(data), '--out', str(tmp_path / 'out')])
    assert capsys.readouterr().err == (f"error: {data}: row key='q1': field 'audio': corrupt audio bytes (path "
                                       f"'cut.wav'): truncated WAV: the data chunk declares 32000 bytes but only "
                                       f"15978 are present (50%)\n")
