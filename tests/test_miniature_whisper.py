"""Whisper tiny's encoder for the miniature (scripts/miniature/whisper_init.py): the CTranslate2 reader on a file
written here by hand, the mapping onto Qwen2.5-Omni's audio tower, and the offline Whisper tiny itself."""
import struct

import numpy as np
import pytest

from scripts.miniature.whisper_init import (WHISPER_TINY_AUDIO, load_whisper_tiny, read_ctranslate2,
                                            whisper_audio_tower, whisper_tiny_path)


def _string(name: str) -> bytes:
    return struct.pack('<H', len(name) + 1) + name.encode() + b'\0'


def _write_ct2(path, variables, version=6):
    """A model.bin in CTranslate2's layout (version, spec name, revision, variables, aliases)."""
    out = struct.pack('<I', version) + _string('WhisperSpec') + struct.pack('<I', 3)
    out += struct.pack('<I', len(variables))
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4}
    for name, value in variables.items():
        out += _string(name) + struct.pack('<B', value.ndim) + b''.join(struct.pack('<I', d) for d in value.shape)
        out += struct.pack('<B', dtype_ids[value.dtype]) + struct.pack('<I', value.nbytes) + value.tobytes()
    out += struct.pack('<I', 0)
    path.write_bytes(out)


def _tiny_whisper(d=4, ffn=8, mels=3):
    """CTranslate2 encoder variables of a one-layer Whisper, every value distinct (float16)."""
    rng = np.random.default_rng(0)
    shapes = {'conv1/weight': (d, mels, 3), 'conv1/bias': (d,), 'conv2/weight': (d, d, 3), 'conv2/bias': (d,),
              'layer_norm/gamma': (d,), 'layer_norm/beta': (d,),
              'layer_0/self_attention/linear_0/weight': (3 * d, d),
              'layer_0/self_attention/linear_1/weight': (d, d), 'layer_0/self_attention/linear_1/bias': (d,),
              'layer_0/self_attention/layer_norm/gamma': (d,), 'layer_0/self_attention/layer_norm/beta': (d,),
              'layer_0/ffn/linear_0/weight': (ffn, d), 'layer_0/ffn/linear_0/bias': (ffn,),
              'layer_0/ffn/linear_1/weight': (d, ffn), 'layer_0/ffn/linear_1/bias': (d,),
              'layer_0/ffn/layer_norm/gamma': (d,), 'layer_0/ffn/layer_norm/beta': (d,)}
    v = {f'encoder/{k}': rng.standard_normal(s).astype(np.float16) for k, s in shapes.items()}
    qkv_bias = rng.standard_normal(3 * d).astype(np.float16)
    qkv_bias[d:2 * d] = 0   # Whisper's key has no bias: CTranslate2 stores zeros in its slot
    v['encoder/layer_0/self_attention/linear_0/bias'] = qkv_bias
    v['decoder/embeddings/weight'] = rng.standard_normal((5, d)).astype(np.float16)
    return v


def test_the_reader_returns_each_variable_with_its_shape_type_and_values(tmp_path):
    variables = _tiny_whisper()
    variables['encoder/num_heads'] = np.array(2, dtype=np.int8)   # a scalar (rank 0), as in the real file
    _write_ct2(tmp_path / 'model.bin', variables)
    got = read_ctranslate2(tmp_path / 'model.bin', 'encoder/')
    assert set(got) == {k for k in variables if k.startswith('encoder/')}   # the prefix filters the decoder out
    for name, value in got.items():
        assert value.dtype == variables[name].dtype and np.array_equal(value, variables[name])
    assert got['encoder/num_heads'].shape == () and int(got['encoder/num_heads']) == 2


def test_a_cut_file_or_another_version_is_a_clear_error(tmp_path):
    _write_ct2(tmp_path / 'model.bin', _tiny_whisper())
    data = (tmp_path / 'model.bin').read_bytes()
    (tmp_path / 'cut.bin').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r'cut\.bin: not a readable CTranslate2 model \(truncated file\)'):
        read_ctranslate2(tmp_path / 'cut.bin')
    _write_ct2(tmp_path / 'v5.bin', _tiny_whisper(), version=5)
    with pytest.raises(ValueError, match='binary version 5'):
        read_ctranslate2(tmp_path / 'v5.bin')


def test_the_mapping_splits_the_fused_attention_and_renames_every_part(tmp_path):
    d = 4
    ct2 = _tiny_whisper(d)
    sd = whisper_audio_tower(ct2)
    qkv = ct2['encoder/layer_0/self_attention/linear_0/weight'].astype(np.float32)
    bias = ct2['encoder/layer_0/self_attention/linear_0/bias'].astype(np.float32)
    assert np.array_equal(sd['layers.0.self_attn.q_proj.weight'], qkv[:d])
    assert np.array_equal(sd['layers.0.self_attn.k_proj.weight'], qkv[d:2 * d])
    assert np.array_equal(sd['layers.0.self_attn.v_proj.weight'], qkv[2 * d:])
    assert np.array_equal(sd['layers.0.self_attn.q_proj.bias'], bias[:d])
    assert np.array_equal(sd['layers.0.self_attn.v_proj.bias'], bias[2 * d:])
    assert 'layers.0.self_attn.k_proj.bias' not in sd   # Qwen's k_proj has no bias either
    assert np.array_equal(sd['ln_post.weight'], ct2['encoder/layer_norm/gamma'].astype(np.float32))
    assert np.array_equal(sd['layers.0.fc2.weight'], ct2['encoder/layer_0/ffn/linear_1/weight'].astype(np.float32))
    assert np.array_equal(sd['layers.0.final_layer_norm.bias'],
                          ct2['encoder/layer_0/ffn/layer_norm/beta'].astype(np.float32))
    assert all(v.dtype == np.float32 for v in sd.values()) and len(sd) == 6 + 15


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_whisper_tiny_loads_into_a_qwen2_5_omni_audio_tower():
    """The offline Whisper tiny: every encoder weight lands in an audio tower of WHISPER_TINY_AUDIO's sizes,
    whose sinusoidal position table is Whisper's own; proj stays the model's."""
    torch = pytest.importorskip('torch')
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration
    ct2 = read_ctranslate2(whisper_tiny_path(), 'encoder/')
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(WHISPER_TINY_AUDIO, output_dim=32, n_window=1500),
        text_config=dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters=dict(rope_type='default', rope_theta=1e6, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]))

    class Holder(torch.nn.Module):   # load_whisper_tiny reads model.thinker, as on the whole Omni model
        def __init__(self):
            super().__init__()
            self.thinker = Qwen2_5OmniThinkerForConditionalGeneration(config)

    model = Holder()
    proj = model.thinker.audio_tower.proj.weight.detach().clone()
    load_whisper_tiny(model)
    tower = model.thinker.audio_tower
    expected = whisper_audio_tower(ct2)
    for name, value in tower.state_dict().items():
        if name in expected:
            assert np.array_equal(value.numpy(), expected[name]), name
    assert set(expected) <= set(tower.state_dict())
    assert torch.equal(tower.proj.weight, proj)
    table = tower.positional_embedding.positional_embedding.numpy()
    assert np.abs(table - ct2['encoder/position_encodings/encodings'].astype(np.float32)).max() < 1e-3
    features = torch.randn(80, 300)   # 3 s of 80-bin log-mel frames
    out = tower(features, feature_lens=torch.tensor([300]))
    assert out.last_hidden_state.shape == (75, 32)   # 300 frames -> 150 after the strided conv -> 75 pooled


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_the_whisper_miniature_model_builds_with_whisper_tinys_encoder_and_80_bin_features(tmp_path):
    """``audio_init: whisper_tiny`` (WHISPER_QWEN2_5_OMNI's audio keys on the QUICK LLM): the saved model's audio
    tower holds Whisper tiny's weights and its processor makes the 80-bin features that encoder reads."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoProcessor

    from scripts.miniature.model import QUICK_QWEN2_5_OMNI, WHISPER_QWEN2_5_OMNI, miniature_model_dir
    from scripts.miniature.stages import QUICK

    audio_keys = {k: v for k, v in WHISPER_QWEN2_5_OMNI.items() if k.startswith('audio_')}
    out = miniature_model_dir(QUICK.world, dict(QUICK_QWEN2_5_OMNI, **audio_keys), cache_dir=tmp_path)
    audio = AutoConfig.from_pretrained(str(out)).thinker_config.audio_config
    assert (audio.num_mel_bins, audio.d_model, audio.encoder_layers, audio.encoder_ffn_dim, audio.n_window) == \
        (80, 384, 4, 1536, 1500)
    assert AutoProcessor.from_pretrained(str(out)).feature_extractor.feature_size == 80
    weights = load_file(str(out / 'model.safetensors'))
    expected = whisper_audio_tower(read_ctranslate2(whisper_tiny_path(), 'encoder/'))
    for name in ('conv1.weight', 'layers.3.self_attn.k_proj.weight', 'ln_post.bias'):
        assert torch.equal(weights[f'thinker.audio_tower.{name}'], torch.from_numpy(expected[name])), name
