"""What the dataset-building notebooks show of a built set (issue 4: a few rows, a waveform, an audio
player, the duration histogram), read back from DIR/hf like any consumer of the set would.

Plots use matplotlib's pyplot, so they render inline in Jupyter and headless elsewhere (Agg).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Union

import datasets
import numpy as np

from trainer.schema import SAMPLING_RATE, load_audio, load_hf_dataset

if TYPE_CHECKING:   # for the annotations only: pandas, matplotlib and IPython load when a notebook plots
    import pandas as pd
    from IPython.display import Audio
    from matplotlib.figure import Figure


def load_built(out_dir: Union[str, Path], split: str = 'train') -> datasets.Dataset:
    """The split of a build's DIR/hf, audio undecoded (trainer.schema.load_hf_dataset)."""
    return load_hf_dataset(str(Path(out_dir) / 'hf'), split)


def rows_table(ds: datasets.Dataset, n: int = 5) -> pd.DataFrame:
    """The first n rows as a pandas DataFrame, without the audio bytes."""
    import pandas as pd
    head = ds.select(range(min(n, len(ds))))
    return pd.DataFrame(head.remove_columns([c for c in ('audio',) if c in head.column_names]).to_list())


def clip(ds: datasets.Dataset, i: int = 0) -> np.ndarray:
    """Row i's audio as float32 mono at 16 kHz."""
    return load_audio(ds[i]['audio'], target_sr=SAMPLING_RATE)


def durations(ds: datasets.Dataset) -> np.ndarray:
    """Every clip's duration in seconds (read from the stored WAV headers, not decoded)."""
    import soundfile as sf
    out = []
    for a in ds.data.column('audio').to_pylist():
        if a.get('bytes'):
            info = sf.info(io.BytesIO(a['bytes']))
        else:
            info = sf.info(a['path'])
        out.append(info.frames / info.samplerate)
    return np.asarray(out, dtype=np.float64)


def plot_waveform(ds: datasets.Dataset, i: int = 0) -> Figure:
    """Row i's waveform against time; returns the figure."""
    import matplotlib.pyplot as plt
    x = clip(ds, i)
    fig, ax = plt.subplots(figsize=(10, 2.5))
    ax.plot(np.arange(len(x)) / SAMPLING_RATE, x, linewidth=0.5)
    ax.set(xlabel='seconds', ylabel='amplitude', title=f"{ds[i]['key']} ({len(x) / SAMPLING_RATE:.2f} s)")
    fig.tight_layout()
    return fig


def audio_player(ds: datasets.Dataset, i: int = 0) -> Audio:
    """An IPython.display.Audio player for row i."""
    from IPython.display import Audio
    return Audio(data=clip(ds, i), rate=SAMPLING_RATE)


def plot_durations(ds: datasets.Dataset, bins: int = 30) -> Figure:
    """Histogram of the clip durations; returns the figure."""
    import matplotlib.pyplot as plt
    d = durations(ds)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(d, bins=bins)
    ax.set(xlabel='seconds', ylabel='clips',
           title=f"{len(d)} clips, mean {d.mean():.1f} s, max {d.max():.1f} s")
    fig.tight_layout()
    return fig
