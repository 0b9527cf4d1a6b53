"""Merge a LoRA adapter into its base with ms-swift's export (docs/original.md §7: the original evaluates merged
models). ``scripts.merge_lora`` is its command line; ``trainer.engine`` merges through :func:`cached_merge` for a
vLLM whose architecture cannot apply a LoRA adapter per request.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional

from trainer.cache import build_once
from trainer.model_loading import check_no_remote_code, check_weight_files

ADAPTER_FILES = ('adapter_config.json', 'adapter_model.safetensors', 'adapter_model.bin')


def export_argv(base: str, model_type: str, adapter: str, out: Path) -> List[str]:
    """``swift export`` flags of the merge. The TARS plugin is passed explicitly: without plugins on the
    command line ms-swift would import the ``external_plugins`` listed in the checkpoint's ``args.json``."""
    from trainer.grpo import PLUGIN
    return ['--model', base, '--model_type', model_type, '--adapters', adapter, '--merge_lora', 'true',
            '--output_dir', str(out), '--external_plugins', str(PLUGIN)]


def merge_into(base: str, model_type: str, adapter: str, out: Path, trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into ``base`` and write the merged model (safetensors, processor and tokenizer files) to
    ``out``, which must not exist. Checked first (nothing loaded, nothing written on a refusal): the weight files
    of both folders (``check_weight_files``) and their remote code (``check_no_remote_code``)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f'{out} exists; choose another --output')
    check_weight_files([base, adapter])
    check_no_remote_code([base, adapter], trust_remote_code)
    from swift.pipelines import export_main  # deferred: ms-swift takes seconds to import; checks run first

    from trainer.model_registry import register_models
    register_models()
    export_main(export_argv(base, model_type, adapter, out))
    return out


def adapter_digest(adapter: str, base: str, model_type: str) -> str:
    """A key of what a merge depends on: the bytes of the adapter's files (``ADAPTER_FILES``), the base and the
    model type."""
    digest = hashlib.sha256(f'{base}\0{model_type}\0'.encode())
    for name in ADAPTER_FILES:
        path = Path(adapter) / name
        if path.is_file():
            digest.update(name.encode() + b'\0')
            with open(path, 'rb') as fh:
                for block in iter(lambda: fh.read(1 << 20), b''):
                    digest.update(block)
    return digest.hexdigest()[:12]


def cached_merge(base: str, model_type: str, adapter: str, trust_remote_code: bool = False,
                 cache_dir: Optional[Path] = None) -> Path:
    """The merged model of ``adapter``, built once per adapter content: ``<cache_dir>/<adapter name>-<digest>``
    (``cache_dir`` default: ``merged/`` beside the adapter, a name no checkpoint rotation or resume looks at).
    Built in a temporary folder and renamed, so a killed merge leaves no folder taken for a finished one."""
    adapter_path = Path(adapter).resolve()
    root = Path(cache_dir) if cache_dir else adapter_path.parent / 'merged'
    out = root / f'{adapter_path.name}-{adapter_digest(adapter, base, model_type)}'
    return build_once(out, 'config.json', lambda path: merge_into(base, model_type, adapter, path, trust_remote_code))
