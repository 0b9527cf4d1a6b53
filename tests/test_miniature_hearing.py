"""The miniature's hearing probe (scripts.miniature.hearing): the values asked for, the exact score, the stage-2
hearing rows and the probe run on the QUICK model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.miniature.hearing import HEARING_PROMPT, hearing_answer, probe_row, row_answer, score


def test_hearing_answer_per_template():
    assert hearing_answer('Ann has 5 apples and gives 3 to Tom. How many apples does Ann have now?',
                          'arithmetic') == '5 gives 3'
    assert hearing_answer('Dan has 2 hats and gets 6 more. How many hats does Dan have now?', 'arithmetic') == \
        '2 gets 6'
    assert hearing_answer('Tom has 7 coins and Sue has 4 coins. Which of them has more coins?', 'comparison') == \
        'Tom 7 Sue 4'
    assert hearing_answer('Kim visits the town of Galt. What colour are the roofs there?', 'knowledge') == \
        'Galt colour'
    with pytest.raises(ValueError, match="unknown template 'riddle'"):
        hearing_answer('Ann has 5 apples.', 'riddle')
    with pytest.raises(ValueError, match='expected two numbers and one verb'):
        hearing_answer('Ann has 5 apples. How many?', 'arithmetic')


def test_every_world_question_has_its_values():
    from scripts.miniature.world import WorldConfig, generate_world
    world = generate_world(WorldConfig(n_train=60, n_validation=30, n_test=30))
    answers = {item.key: hearing_answer(item.question, item.template) for item in world.items()}
    assert len(answers) == 120 and all(answers.values())


def test_score_is_exact():
    assert score(' Tom 7  Sue 4. ', 'Tom 7 Sue 4')
    assert not score('Tom 7 Sue 5', 'Tom 7 Sue 4') and not score('tom 7 Sue 4', 'Tom 7 Sue 4')
    assert not score('Tom 7 Sue 4 Tom', 'Tom 7 Sue 4')


def test_probe_row_and_the_stage_2_rows(tmp_path):
    """prepare_warmstart_dataset(probe=probe_row): each spoken item gives its speech row, its hearing row, then
    its text row; the hearing row asks HEARING_PROMPT of the same clip and is answered by the item's values."""
    import datasets
    import numpy as np

    from trainer.data import prepare_warmstart_dataset
    rows = [{'key': f'k{i}', 'question': q, 'subject': t, 'options': ['4', '5', '6', '7'], 'answer_index': 2,
             'prompt_for_tts': q + '\nA. 4\nB. 5\nC. 6\nD. 7', 'thinking': 'x', 'source': 'miniature',
             'audio': {'array': np.zeros(1600, dtype=np.float32), 'sampling_rate': 16000}}
            for i, (q, t) in enumerate([('Ann has 5 apples and buys 2 more. How many apples does Ann have now?',
                                         'arithmetic'),
                                        ('Ann lives in the town of Brill. Which tree grows there?', 'knowledge')])]
    assert row_answer(rows[1]) == 'Brill tree'
    assert probe_row(rows[0], '/c.wav') == {
        'messages': [{'role': 'user', 'content': '<audio>' + HEARING_PROMPT},
                     {'role': 'assistant', 'content': '5 buys 2'}], 'audios': ['/c.wav']}
    path = tmp_path / 'set'
    datasets.DatasetDict({'train': datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    out = prepare_warmstart_dataset(str(path), tmp_path / 'w', modality='mixed', probe=probe_row)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 6
    assert [r['messages'][-1]['content'] for r in written[1::3]] == ['5 buys 2', 'Brill tree']
    assert written[1]['audios'] == written[0]['audios'] and 'audios' not in written[2]
    with pytest.raises(ValueError, match='probe rows need a spoken modality'):
        prepare_warmstart_dataset(str(path), tmp_path / 'w2', modality='text', probe=probe_row)
    # the hearing phase's rows: the hearing rows alone, in the items' order, on the same clips
    only = prepare_warmstart_dataset(str(path), tmp_path / 'w3', modality='probe', probe=probe_row)
    hearing_rows = [json.loads(line) for line in only.read_text().splitlines()]
    assert [r['messages'] for r in hearing_rows] == [r['messages'] for r in written[1::3]]
    assert [Path(r['audios'][0]).name for r in hearing_rows] == [Path(r['audios'][0]).name for r in written[1::3]]
    with pytest.raises(ValueError, match="modality 'probe' writes only probe rows"):
        prepare_warmstart_dataset(str(path), tmp_path / 'w4', modality='probe')


def test_stage2_phases_chain_from_each_other(tmp_path, monkeypatch):
    """stage2_chain: the first phase from stage 1 on the mixed rows, then each of Setting.stage2_phases from the
    previous checkpoint with its own rows and steps (FULL's: hearing rows alone 600 steps, mixed again 600); stage2
    is the last; a bad phase is refused before anything trains."""
    import dataclasses

    from scripts.miniature import stages
    calls = []

    def fake_sft(start, data, out, recipe, model_type, **kw):
        calls.append((start.name, out.name, recipe['steps'], kw['modality'], kw['speech_thinking'],
                      kw['probe'] is not None, kw['max_rows']))
        return out
    monkeypatch.setattr('scripts.recipes.embedded.sft_checkpoint', fake_sft)
    monkeypatch.setattr(stages, 'world_dataset', lambda setting, speech, cache_dir=None: tmp_path / str(speech))
    monkeypatch.setattr(stages, 'model_dir', lambda setting, cache_dir=None: tmp_path / 'model')
    chain = stages.stage2_chain(stages.FULL, tmp_path)
    assert [c[2:] for c in calls] == [(2400, 'text', None, False, None),
                                      (1200, 'mixed', 1500, True, 3000),
                                      (600, 'probe', None, True, 3000),
                                      (600, 'mixed', 1500, True, 3000)]
    assert [c[0] for c in calls[1:]] == [c[1] for c in calls[:-1]]   # each phase starts from the one before
    assert len(chain) == 3 and len({c.name for c in chain}) == 3 and chain == [tmp_path / 'miniature' / c[1]
                                                                               for c in calls[1:]]
    calls.clear()
    assert stages.stage2(stages.FULL, tmp_path) == chain[-1]
    for phases, match in ((('asr', 5),), 'expected one of probe, mixed'), ((('probe', 0),), 'positive step count'):
        with pytest.raises(ValueError, match=match):
            stages.stage2_chain(dataclasses.replace(stages.FULL, stage2_phases=phases), tmp_path)
    with pytest.raises(ValueError, match='needs stage2_hearing'):
        stages.stage2_chain(dataclasses.replace(stages.FULL, stage2_hearing=False), tmp_path)


@pytest.mark.slow  # trains the QUICK stages (tests/conftest.py)
def test_quick_stage2_learns_the_probe_format_and_the_probe_runs(tmp_path):
    """The QUICK stage 2 trains with hearing rows (recorded in warm_start.json) and the probe scores its test
    items, resumes from its results file, and counts per template."""
    from scripts.miniature import hearing, stages
    checkpoint = stages.stage2(stages.QUICK, tmp_path)
    assert json.loads((checkpoint / 'warm_start.json').read_text())['probe'] == 'probe_row'
    result = hearing.probe(checkpoint, stages.QUICK, tmp_path)
    assert result['n'] == stages.QUICK.eval_items and 0.0 <= result['hearing_acc'] <= 1.0
    assert set(result['by_template']) <= {'arithmetic', 'comparison', 'knowledge'}
    files = list((tmp_path / 'miniature' / 'hearing').glob('*/test/results.jsonl'))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == stages.QUICK.eval_items
    # its seconds are stored beside the answers, for a later call to report
    assert result['generated'] == stages.QUICK.eval_items and result['wall_seconds'] > 0
    assert json.loads((files[0].parent / 'wall_seconds.json').read_text())['seconds'] == result['wall_seconds']
    again = hearing.probe(checkpoint, stages.QUICK, tmp_path)   # read back, nothing generated
    assert again == dict(result, generated=0)
    # a resumed probe answers only what is missing and adds its seconds to the stored ones
    lines = files[0].read_text().splitlines()
    files[0].write_text('\n'.join(lines[:-1]) + '\n')
    resumed = hearing.probe(checkpoint, stages.QUICK, tmp_path)
    assert resumed['generated'] == 1 and resumed['wall_seconds'] > result['wall_seconds']
    assert resumed['hearing_acc'] == result['hearing_acc']
