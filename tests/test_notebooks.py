"""scripts/dataset_building/build_*.ipynb run top to bottom (issue 4 item 3) with nbclient, on small local
fixtures in the sources' formats (tests/dataset_fixtures.py), in a kernel of this interpreter. Each
run must build a set that passes the schema validation with the expected rows, and show a table, two
figures (rendered headless) and an audio player. Parameters reach the notebooks as TARS_NB_* variables."""
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

from tests.dataset_fixtures import write_cuhk_source, write_source, write_voicebench_source  # noqa: E402
from trainer.schema import load_hf_dataset, validate_dataset  # noqa: E402

pytestmark = pytest.mark.slow  # every test here runs a notebook kernel (tests/conftest.py: tiers)

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / 'scripts' / 'dataset_building'
KERNEL = 'tars-test-python'
NOTEBOOKS = ('build_mmlu.ipynb', 'build_mmsu.ipynb', 'build_obqa.ipynb', 'build_cuhk_mmsu.ipynb')


@pytest.fixture(scope='module')
def kernel_env(tmp_path_factory):
    """A kernelspec running ipykernel in this interpreter, found first through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp('jupyter')
    spec = root / 'kernels' / KERNEL
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'TARS test kernel', 'language': 'python'}))
    return {'JUPYTER_PATH': str(root)}


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp('nb_sources')
    write_voicebench_source(root / 'voicebench')
    write_cuhk_source(root / 'cuhk')
    write_source(root / 'mmlu.jsonl', ["The capital of France is ____.", "What is 2 + 2?", "Which is a fruit?",
                                       "Name a ___ colour and a ___ shape."])
    return root


def run_notebook(name, params, env, monkeypatch):
    """Execute a stored notebook with TARS_NB_* parameters; return the executed notebook."""
    for k, v in {**env, **{f"TARS_NB_{k}": str(v) for k, v in params.items()}}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')   # what Jupyter uses
    monkeypatch.delenv('DISPLAY', raising=False)                                      # headless
    nb = nbformat.read(str(NB_DIR / name), as_version=4)
    assert all(c.get('outputs', []) == [] and c.get('execution_count') is None
               for c in nb.cells if c.cell_type == 'code'), f"{name} is stored with outputs"
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL,
                                     resources={'metadata': {'path': str(NB_DIR)}})   # Jupyter's cwd
    client.execute()
    return nb


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]


def check_shown(nb):
    """A DataFrame table, two PNG figures and an audio player are displayed; no cell raised."""
    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == 'error']
    html = [o['data']['text/html'] for o in outs if 'text/html' in o.get('data', {})]
    assert any('<table' in h for h in html)
    assert any('<audio' in h for h in html)
    assert sum('image/png' in o.get('data', {}) for o in outs) == 2


def check_built(out, n_rows):
    ds = load_hf_dataset(str(out / 'hf'))
    validate_dataset(ds, str(out))
    assert len(ds) == n_rows and len(set(ds['key'])) == n_rows
    return ds


CASES = {
    # notebook: (parameters given the fixture root, expected rows)
    'build_mmlu.ipynb': (lambda s: {'SOURCE': s / 'mmlu.jsonl', 'ROWS': 3, 'SEED': 1, 'MAX_CHARS': 120}, 3),
    # the first 6 rows of the 'law' split: 3 of them are bad (reported), 3 are kept
    'build_mmsu.ipynb': (lambda s: {'SOURCE_DIR': s / 'voicebench', 'LIMIT': 6}, 3),
    'build_obqa.ipynb': (lambda s: {'SOURCE_DIR': s / 'voicebench'}, 3),
    'build_cuhk_mmsu.ipynb': (lambda s: {'AUDIO_DIR': s / 'cuhk' / 'audio', 'METADATA': s / 'cuhk' / 'mmsu.jsonl'}, 5),
}


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_builds_and_shows(name, sources, kernel_env, monkeypatch, tmp_path):
    params, n_rows = CASES[name]
    out = tmp_path / 'out'
    nb = run_notebook(name, {**params(sources), 'OUT_DIR': out}, kernel_env, monkeypatch)
    ds = check_built(out, n_rows)
    check_shown(nb)
    if name == 'build_mmlu.ipynb':
        summary = json.loads((out / 'summary.json').read_text())
        assert summary['source'] == str(sources / 'mmlu.jsonl') and summary['tts'] == 'espeak:en-us'
        assert all(k.startswith('mmlu@') for k in ds['key']) and 'prompt_for_tts_tn' in ds.column_names
    else:
        report = json.loads((out / 'report.json').read_text())
        assert report['rows_kept'] == n_rows and report['source']['kind'] == 'local'
        if name == 'build_mmsu.ipynb':
            assert report['row_limit'] == 6 and report['rows_read'] == 6 and report['rows_dropped'] == 3


def test_notebook_never_overwrites_an_earlier_build(sources, kernel_env, monkeypatch, tmp_path):
    out = tmp_path / 'out'
    params = {'SOURCE_DIR': sources / 'voicebench', 'OUT_DIR': out, 'LIMIT': 1}
    run_notebook('build_obqa.ipynb', params, kernel_env, monkeypatch)
    before = (out / 'report.json').read_text()
    check_built(out, 1)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="FileExistsError"):
        run_notebook('build_obqa.ipynb', {**params, 'LIMIT': 2}, kernel_env, monkeypatch)
    assert (out / 'report.json').read_text() == before
    check_built(out, 1)


def test_preview_plots_headless_with_agg(sources, tmp_path):
    """The figures also render outside Jupyter on a machine without a display (Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    from scripts.dataset_building import preview
    from scripts.dataset_building.voicebench import build_voicebench
    build_voicebench('openbookqa', tmp_path / 'obqa', source_dir=sources / 'voicebench')
    ds = preview.load_built(tmp_path / 'obqa')
    assert matplotlib.get_backend().lower() == 'agg'
    d = preview.durations(ds)
    assert d.shape == (3,) and all(abs(x - 0.6) < 0.01 for x in d)       # the fixture's 0.6 s clips
    for fig in (preview.plot_waveform(ds, 1), preview.plot_durations(ds)):
        fig.savefig(tmp_path / 'f.png')
        assert (tmp_path / 'f.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = preview.rows_table(ds, n=2)
    assert list(table['key']) == ['obqa_0', 'obqa_1'] and 'audio' not in table.columns
    assert preview.audio_player(ds, 0).data[:4] == b'RIFF'
