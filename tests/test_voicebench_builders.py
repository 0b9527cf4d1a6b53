"""scripts/dataset_building/voicebench.py and cuhk_mmsu.py: VoiceBench MMSU/OBQA and CUHK MMSU -> hf_format
(docs/original.md §5.2, §5.3; the defects of §11.13 reported, not written).

The fixtures (tests/dataset_fixtures.py) are in the sources' formats: the hub's parquet files (audio as the
{bytes, path} struct of datasets.Audio) for VoiceBench; <id>.wav/.flac clips at 48 kHz plus a mmsu.jsonl
for CUHK. Every clip is a tone whose frequency identifies its row, so a clip landing on the wrong row is
caught.
"""
import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from scripts.dataset_building import common, cuhk_mmsu, voicebench
from scripts.dataset_building.cuhk_mmsu import answer_position, build_cuhk_mmsu, choices_of
from scripts.dataset_building.voicebench import (MMSU_SPLITS, RowError, answer_from_reference, build_voicebench,
                                                 find_parquet_files, split_prompt)
from tests.dataset_fixtures import (AMP, CLIP_SECONDS, CUHK_FREQ, INSTRUCTION, MULTILINE_Q, ROMAN_Q, meta, prompt,
                                    source_dataset, tone, write_cuhk_source, write_split, write_voicebench_source)
from trainer.schema import encode_wav_bytes, load_audio, load_hf_dataset, validate_dataset

def dominant_freq(x, sr=16000):
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(np.abs(np.fft.rfft(x)))]


def check_clip(audio, freq):
    """16 kHz mono, the fixture's duration, a tone's RMS and the row's own frequency."""
    x = load_audio(audio, target_sr=16000)
    assert x.ndim == 1 and x.dtype == np.float32
    assert abs(len(x) / 16000 - CLIP_SECONDS) < 0.01
    assert abs(np.sqrt(np.mean(x ** 2)) - AMP / np.sqrt(2)) < 0.01
    assert abs(dominant_freq(x) - freq) < 5


def check_header_16k(out):
    """The stored bytes themselves are 16 kHz mono WAV (not the source's format re-labelled)."""
    ds = load_hf_dataset(str(out / 'hf'))
    info = sf.info(io.BytesIO(ds[0]['audio']['bytes']))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, 'WAV')


# -----------------------------------------------------------------------------
# VoiceBench fixtures: tests/dataset_fixtures.py writes the hub's parquet layout

MMSU_DROPPED = {'ori_mmlu-jurisprudence_888': 'reference_not_an_option',
                'ori_mmlu-jurisprudence_889': 'fewer_than_2_options',
                'ori_mmlu-jurisprudence_890': 'bad_audio',
                'stemez-other_101': 'duplicate_key'}


@pytest.fixture(scope='module')
def vb_source(tmp_path_factory):
    root = tmp_path_factory.mktemp('voicebench')
    return root, write_voicebench_source(root)


@pytest.fixture(scope='module')
def mmsu_built(vb_source, tmp_path_factory):
    root, freqs = vb_source
    out = tmp_path_factory.mktemp('mmsu_out')
    dsd = build_voicebench('mmsu', out, source_dir=root)
    return out, dsd, freqs

# -----------------------------------------------------------------------------
# VoiceBench text


def test_split_prompt_keeps_multi_line_question_whole():
    question, options, notes = split_prompt(prompt(MULTILINE_Q, ["a", "b", "c", "d"]))
    assert question == ("A state statute provides:\n"
                        "\"Whenever a person knows or should know that he is being arrested, he may not resist.\"\n"
                        "Which of the following is the best argument against the statute?")
    assert options == ["a", "b", "c", "d"] and notes == ['multi_line_question']


def test_split_prompt_statement_lines_stay_in_question_and_continuations_in_options():
    question, options, notes = split_prompt(ROMAN_Q + "\nA. I only\nB. V\nonly V\nC. both\nD. neither\n" + INSTRUCTION)
    assert question == ROMAN_Q                              # "I." and "V." match ^[A-Z]\.\s but are not options
    assert options == ["I only", "V\nonly V", "both", "neither"]
    assert notes == ['labelled_lines_in_question', 'multi_line_option', 'multi_line_question']
    assert split_prompt("Q?\nA. x\nB. y") == ("Q?", ["x", "y"], ['no_instruction_line'])


@pytest.mark.parametrize('text, code', [
    ("Q?\nA. one\n" + INSTRUCTION, 'fewer_than_2_options'),
    ("Q? no options at all", 'fewer_than_2_options'),
    ("Q?\nA. one\nB. two\nD. four\n" + INSTRUCTION, 'option_letters_out_of_order'),
    ("A. one\nB. two\n" + INSTRUCTION, 'empty_question'),
    ("Q?\nA. one\nB. \n" + INSTRUCTION, 'empty_option'),
    ("   ", 'empty_prompt'),
])
def test_split_prompt_rejects(text, code):
    with pytest.raises(RowError) as e:
        split_prompt(text)
    assert e.value.code == code


def test_answer_from_reference():
    assert answer_from_reference('A', 4) == 0 and answer_from_reference(' D\n', 4) == 3
    for ref, n, code in (('E', 4, 'reference_not_an_option'), ('a', 4, 'bad_reference'),
                         ('AB', 4, 'bad_reference'), (None, 4, 'bad_reference'), ('', 4, 'bad_reference')):
        with pytest.raises(RowError) as e:
            answer_from_reference(ref, n)
        assert e.value.code == code

# -----------------------------------------------------------------------------
# VoiceBench builds


def test_mmsu_build_is_valid_and_reports_bad_rows(mmsu_built):
    out, dsd, freqs = mmsu_built
    assert list(dsd) == ['train']
    ds = load_hf_dataset(str(out / 'hf'))
    validate_dataset(ds, 'vb-mmsu')
    assert isinstance(dsd['train'].features['audio'], datasets.Audio)
    assert dsd['train'].features['question_id'] == datasets.Value('int64')

    keys = ds['key']
    # 12 splits in the hub's order, source order within each; a repeated key keeps its first row only
    expected = [k for k in freqs if MMSU_DROPPED.get(k) in (None, 'duplicate_key')]
    assert keys == expected
    assert len(set(keys)) == len(keys) == 14

    rows = {r['key']: r for r in ds}
    first = rows['ori_mmlu-jurisprudence_886']
    assert first['question'] == "What is law?" and first['options'] == ["rules", "food", "music", "weather"]
    assert first['answer_index'] == 0 and first['prompt_for_tts'] == prompt("What is law?", first['options'])
    assert (first['source'], first['subject'], first['category'], first['question_id']) == \
        ('mmsu', 'law', 'law', 886)
    assert rows['ori_mmlu-professional_law_887']['question'] == MULTILINE_Q
    assert rows['ori_mmlu-logical_fallacies_891']['question'] == ROMAN_Q
    assert rows['ori_mmlu-logical_fallacies_891']['answer_index'] == 2
    assert rows['stemez-physics_110']['subject'] == 'physics'
    assert rows['stemez-physics_110']['question'] == "A physics question?"
    for key, row in rows.items():
        check_clip(row['audio'], freqs[key])
    check_header_16k(out)

    report = json.loads((out / 'report.json').read_text())
    assert (report['rows_read'], report['rows_kept'], report['rows_dropped']) == (18, 14, 4)
    assert {d['key']: d['reason'] for d in report['dropped']} == MMSU_DROPPED
    assert report['dropped_by_reason'] == {'bad_audio': 1, 'duplicate_key': 1, 'fewer_than_2_options': 1,
                                           'reference_not_an_option': 1}
    bad_ref = next(d for d in report['dropped'] if d['reason'] == 'reference_not_an_option')
    assert (bad_ref['split'], bad_ref['row']) == ('law', 2) and "'E'" in bad_ref['detail']
    assert report['notes']['multi_line_question']['count'] == 2
    assert report['notes']['labelled_lines_in_question']['examples'] == ['ori_mmlu-logical_fallacies_891']
    assert report['output_split'] == 'train' and report['source']['kind'] == 'local'
    assert not list(out.glob('.*'))               # the staged clips and temporary folders are gone


def test_mmsu_rebuild_has_same_keys_and_refuses_to_overwrite(mmsu_built, vb_source, tmp_path):
    out, dsd, _ = mmsu_built
    root, _ = vb_source
    with pytest.raises(FileExistsError, match="overwrite"):
        build_voicebench('mmsu', out, source_dir=root)
    # second build from the config folder itself (the other layout): identical rows
    again = build_voicebench('mmsu', tmp_path / 'again', source_dir=root / 'mmsu')['train']
    first = dsd['train']
    assert again['key'] == first['key']
    for col in ('question', 'options', 'answer_index', 'prompt_for_tts', 'subject'):
        assert again[col] == first[col]
    a0 = voicebench.audio_undecoded(again)[0]['audio']['bytes']
    assert a0 == voicebench.audio_undecoded(first)[0]['audio']['bytes']


def test_obqa_build(vb_source, tmp_path):
    root, _ = vb_source
    dsd = build_voicebench('openbookqa', tmp_path / 'obqa', source_dir=root)
    ds = load_hf_dataset(str(tmp_path / 'obqa' / 'hf'))
    validate_dataset(ds, 'vb-obqa')
    assert ds['key'] == ['obqa_0', 'obqa_1', 'obqa_3']        # idx is the source position: stable keys
    assert ds['answer_index'] == [0, 3, 1]
    assert set(ds['category']) == set(ds['subject']) == {'obqa'} and set(ds['source']) == {'obqa'}
    assert 'question_id' not in dsd['train'].column_names
    for row, i in zip(ds, (0, 1, 3), strict=False):
        assert row['question'] == f"OBQA question {i}?"
        check_clip(row['audio'], 1000 + 50 * i)
    report = json.loads((tmp_path / 'obqa' / 'report.json').read_text())
    assert report['dropped'] == [{'key': 'obqa_2', 'reason': 'reference_not_an_option', 'split': 'test', 'row': 2,
                                  'detail': "reference 'Q' but only 4 options (A-D)"}]


def test_parquet_layouts(vb_source, tmp_path):
    root, _ = vb_source
    assert [s for s, _ in find_parquet_files(root, 'mmsu')] == list(MMSU_SPLITS)
    assert find_parquet_files(root, 'mmsu') == find_parquet_files(root / 'mmsu', 'mmsu')
    partial = tmp_path / 'partial'
    (partial / 'mmsu').mkdir(parents=True)
    for name in ('law-00000-of-00001.parquet', 'physics-00000-of-00001.parquet'):
        (partial / 'mmsu' / name).write_bytes((root / 'mmsu' / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="engineering, other"):
        find_parquet_files(partial, 'mmsu')
    assert [s for s, _ in find_parquet_files(partial, 'mmsu', ['physics', 'law'])] == ['physics', 'law']
    loose = tmp_path / 'loose' / 'deep'
    loose.mkdir(parents=True)
    (loose / 'whatever.parquet').write_bytes((root / 'openbookqa' / 'test-00000-of-00001.parquet').read_bytes())
    (loose / 'more.parquet').write_bytes((root / 'openbookqa' / 'test-00000-of-00001.parquet').read_bytes())
    assert find_parquet_files(tmp_path / 'loose', 'openbookqa') == \
        [('test', [loose / 'more.parquet', loose / 'whatever.parquet'])]
    assert find_parquet_files(tmp_path / 'loose', 'mmsu') == \
        [('more', [loose / 'more.parquet']), ('whatever', [loose / 'whatever.parquet'])]
    with pytest.raises(FileNotFoundError):
        find_parquet_files(tmp_path / 'nothing-here', 'mmsu')


def test_hub_path_and_cli(vb_source, tmp_path, monkeypatch, capsys):
    """The hub branch (load_dataset stubbed with the fixture's rows) and the CLI, in process."""
    root, _ = vb_source
    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_parquet(str(root / config / f"{split}-00000-of-00001.parquet"),
                                             cache_dir=str(tmp_path / 'cache'))
    monkeypatch.setattr(datasets, 'load_dataset', fake_load_dataset)
    voicebench.main(['--config', 'openbookqa', '--out', str(tmp_path / 'hub')])
    assert calls == [('hlt-lab/voicebench', 'openbookqa', 'test')]
    summary = json.loads(capsys.readouterr().out)
    assert summary['rows_kept'] == 3 and summary['source']['kind'] == 'hub' and 'dropped' not in summary
    assert load_hf_dataset(str(tmp_path / 'hub' / 'hf'))['key'] == ['obqa_0', 'obqa_1', 'obqa_3']
    with pytest.raises(SystemExit) as e:                    # existing output: exit 2, nothing replaced
        voicebench.main(['--config', 'openbookqa', '--out', str(tmp_path / 'hub')])
    assert e.value.code == 2 and "already exist" in capsys.readouterr().err

    def offline(*a, **k):
        raise ConnectionError("offline")
    monkeypatch.setattr(datasets, 'load_dataset', offline)
    with pytest.raises(RuntimeError, match="--source_dir"):
        build_voicebench('mmsu', tmp_path / 'offline')

def test_nothing_kept_writes_report_and_no_dataset(tmp_path):
    bad = [{'audio': {'bytes': encode_wav_bytes(tone(500)), 'path': None}, 'prompt': "Q?\nA. only\n" + INSTRUCTION,
            'reference': 'A'}]
    write_split(tmp_path / 'src', 'openbookqa', 'test', bad)
    with pytest.raises(RuntimeError, match="no row kept out of 1"):
        build_voicebench('openbookqa', tmp_path / 'out', source_dir=tmp_path / 'src')
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert report['dropped'][0]['reason'] == 'fewer_than_2_options' and report['rows_kept'] == 0
    assert not (tmp_path / 'out' / 'hf').exists()


def test_keys_with_the_same_clip_name_keep_their_own_clips(tmp_path):
    items = [({'row': i}, (lambda i=i, k=k: ({'key': k}, [], {'bytes': encode_wav_bytes(tone(300 + 200 * i)),
                                                                'path': None})))
             for i, k in enumerate(['a/b', 'a_b', 'a b'])]
    report = common.new_report('toy', {})
    rows = common.convert_rows(items, tmp_path / 'wav', report)
    assert [r['key'] for r in rows] == ['a/b', 'a_b', 'a b'] and len({r['audio'] for r in rows}) == 3
    for i, r in enumerate(rows):
        check_clip(r['audio'], 300 + 200 * i)


# -----------------------------------------------------------------------------
# CUHK MMSU


CUHK_DROPPED = {'stress_0004': 'answer_gt_matches_no_choice', 'nosound_0007': 'metadata_without_audio',
                'orphan_0099': 'audio_without_metadata', None: 'bad_metadata_line'}


@pytest.fixture(scope='module')
def cuhk_source(tmp_path_factory):
    return write_cuhk_source(tmp_path_factory.mktemp('cuhk'))


def test_cuhk_text_steps():
    assert choices_of(meta('x', 'a', choices=('a', 'b', '', None))) == ['a', 'b']
    for choices, code in ((('a', '', 'c', 'd'), 'empty_option'), (('a', None, None, None), 'fewer_than_2_options')):
        with pytest.raises(RowError) as e:
            choices_of(meta('x', 'a', choices=choices))
        assert e.value.code == code
    assert answer_position('b', ['a', 'b']) == (1, None)
    assert answer_position('B  ', ['a', 'b']) == (1, 'answer_matched_after_normalising')
    for ans, opts, code in (('c', ['a', 'b'], 'answer_gt_matches_no_choice'), ('a', ['a', 'a'], 'answer_gt_ambiguous'),
                            ('A', ['a', ' a'], 'answer_gt_ambiguous'), (None, ['a', 'b'], 'missing_answer')):
        with pytest.raises(RowError) as e:
            answer_position(ans, opts)
        assert e.value.code == code
    row, notes = cuhk_mmsu.make_row(meta('intonation_0001', 'falling'))
    assert row['prompt_for_tts'] == "Which intonation is used?\nA. rising\nB. falling\nC. flat\nD. none"
    assert row['subject'] == row['category'] == "Perception-Phonology-Intonation-Prosody"
    assert (row['answer_index'], row['source'], notes) == (1, 'cuhk_mmsu', [])


def test_cuhk_build(cuhk_source, tmp_path):
    out = tmp_path / 'cuhk'
    build_cuhk_mmsu(out, audio_dir=cuhk_source / 'audio', metadata=cuhk_source / 'mmsu.jsonl')
    ds = load_hf_dataset(str(out / 'hf'))
    validate_dataset(ds, 'cuhk')
    assert ds['key'] == ['intonation_0001', 'intonation_0002', 'intonation_0003', 'stress_0005', 'yesno_0006']
    assert ds['answer_index'] == [1, 0, 2, 2, 0]
    rows = {r['key']: r for r in ds}
    assert rows['intonation_0003']['question'] == "Listen.\nWhich intonation is used?"
    assert rows['stress_0005']['options'] == ['1', '2', '3', '4']
    assert rows['yesno_0006']['options'] == ['yes', 'no']
    assert rows['yesno_0006']['prompt_for_tts'] == "Which intonation is used?\nA. yes\nB. no"
    assert rows['intonation_0001']['linguistics_sub_discipline'] == 'Prosody'
    assert rows['intonation_0001']['task_name'] == 'intonation_perception'
    for key, row in rows.items():
        check_clip(row['audio'], CUHK_FREQ[key])                 # 48 kHz wav/flac -> 16 kHz
    check_header_16k(out)

    report = json.loads((out / 'report.json').read_text())
    assert {d['key']: d['reason'] for d in report['dropped']} == CUHK_DROPPED
    assert (report['metadata_rows'], report['audio_clips']) == (8, 7)
    assert (report['rows_read'], report['rows_kept'], report['rows_dropped']) == (9, 5, 4)
    assert report['notes']['answer_matched_after_normalising']['examples'] == ['intonation_0002']
    bad = next(d for d in report['dropped'] if d['reason'] == 'answer_gt_matches_no_choice')
    assert "'penultimate'" in bad['detail'] and bad['metadata_line'] == 5

    again = build_cuhk_mmsu(tmp_path / 'again', audio_dir=cuhk_source / 'audio',
                            metadata=cuhk_source / 'mmsu.jsonl')['train']
    assert again['key'] == ds['key'] and again['prompt_for_tts'] == ds['prompt_for_tts']
    with pytest.raises(FileExistsError, match="overwrite"):
        build_cuhk_mmsu(out, audio_dir=cuhk_source / 'audio', metadata=cuhk_source / 'mmsu.jsonl')


def test_cuhk_duplicate_ids_and_clips(tmp_path):
    audio = tmp_path / 'audio'
    (audio / 'a').mkdir(parents=True)
    (audio / 'b').mkdir()
    for d, id_ in (('a', 'x1'), ('b', 'x1'), ('a', 'x2'), ('a', 'x3')):
        sf.write(str(audio / d / f"{id_}.wav"), tone(400), 16000)
    lines = [meta('x1', 'rising'), meta('x2', 'rising'), meta('x2', 'flat'), meta('x3', 'flat')]
    (tmp_path / 'm.jsonl').write_text("".join(json.dumps(m) + "\n" for m in lines))
    build_cuhk_mmsu(tmp_path / 'out', audio_dir=audio, metadata=tmp_path / 'm.jsonl')
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert sorted((d['key'], d['reason']) for d in report['dropped']) == [
        ('x1', 'duplicate_audio'), ('x2', 'duplicate_id'), ('x2', 'duplicate_id')]
    assert load_hf_dataset(str(tmp_path / 'out' / 'hf'))['key'] == ['x3']


def test_cuhk_hub_audio_only_rows_joined_with_metadata(cuhk_source, tmp_path, monkeypatch, capsys):
    """Hub branch: audio-only rows (an audiofolder) + question/mmsu.jsonl, both stubbed; via the CLI."""
    clips = sorted(p for p in (cuhk_source / 'audio').rglob('*') if p.suffix in ('.wav', '.flac'))
    hub_rows = [{'audio': {'bytes': p.read_bytes(), 'path': f"/cache/MMSU/audio/{p.name}"}} for p in clips]

    def fake_load_dataset(hub_id, split):
        assert (hub_id, split) == ('ddwang2000/MMSU', 'train')
        return source_dataset(hub_rows)

    def fake_download(repo_id, filename, repo_type):
        assert (repo_id, filename, repo_type) == ('ddwang2000/MMSU', 'question/mmsu.jsonl', 'dataset')
        return str(cuhk_source / 'mmsu.jsonl')
    monkeypatch.setattr(datasets, 'load_dataset', fake_load_dataset)
    monkeypatch.setattr('huggingface_hub.hf_hub_download', fake_download)
    cuhk_mmsu.main(['--out', str(tmp_path / 'hub')])
    summary = json.loads(capsys.readouterr().out)
    assert summary['rows_kept'] == 5 and summary['source']['kind'] == 'hub'
    ds = load_hf_dataset(str(tmp_path / 'hub' / 'hf'))
    assert ds['key'] == ['intonation_0001', 'intonation_0002', 'intonation_0003', 'stress_0005', 'yesno_0006']
    for row in ds:
        check_clip(row['audio'], CUHK_FREQ[row['key']])
    report = json.loads((tmp_path / 'hub' / 'report.json').read_text())
    assert {d['key']: d['reason'] for d in report['dropped']} == CUHK_DROPPED

    with pytest.raises(SystemExit) as e:
        cuhk_mmsu.main(['--out', str(tmp_path / 'x'), '--audio_dir', str(cuhk_source)])
    assert e.value.code == 2 and "--metadata" in capsys.readouterr().err


def test_limit_converts_only_the_first_rows(cuhk_source, vb_source, tmp_path):
    dsd = build_cuhk_mmsu(tmp_path / 'c', audio_dir=cuhk_source / 'audio', metadata=cuhk_source / 'mmsu.jsonl',
                          limit=2)
    assert dsd['train']['key'] == ['intonation_0001', 'intonation_0002']
    report = json.loads((tmp_path / 'c' / 'report.json').read_text())
    assert report['row_limit'] == 2 and report['rows_kept'] == 2
    root, _ = vb_source
    assert build_voicebench('openbookqa', tmp_path / 'o', source_dir=root, limit=3)['train']['key'] == \
        ['obqa_0', 'obqa_1']                                       # row 2 of the first 3 is bad
    with pytest.raises(ValueError, match="limit=0"):
        build_voicebench('openbookqa', tmp_path / 'z', source_dir=root, limit=0)
