"""Text-to-speech behind one small interface (design.md section 5; stands in for the original's
CosyVoice2 engine, reference section 5.1 step 3).

A backend turns text into float32 mono audio at 16 kHz. `EspeakTTS` needs only the PyPI package
`espeakng-loader` (libespeak-ng + voices), called through ctypes. More backends (Piper, HTTP) plug in
through `get_tts`.
"""
import ctypes
import threading
from math import gcd
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

from trainer.schema import SAMPLING_RATE


class TTSBackend(Protocol):
    name: str

    def synthesize(self, text: str) -> np.ndarray:
        """Return float32 mono audio at 16 kHz."""
        ...


# -----------------------------------------------------------------------------
# espeak-ng through ctypes. The library is global state (one voice, one callback), so it is
# initialised once per process and every synthesis holds _LOCK.

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000   # report errors instead of calling exit()
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_DEFAULT_RATE = 175              # espeakRATE_NORMAL, words per minute
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_ENGINE = None   # dict(lib, native_sr, callback, chunks, settings) once initialised


def _on_samples(wav, n, events):
    if wav and n > 0:
        _ENGINE['chunks'].append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0   # 0 = continue synthesis


def _engine():
    """Load and initialise libespeak-ng once (call with _LOCK held)."""
    global _ENGINE
    if _ENGINE is None:
        import espeakng_loader
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data = espeakng_loader.get_data_path().encode()
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if sr <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({sr}) with data path {data.decode()!r}")
        callback = _SYNTH_CALLBACK(_on_samples)   # kept referenced so ctypes does not free it
        lib.espeak_SetSynthCallback(callback)
        _ENGINE = dict(lib=lib, native_sr=sr, callback=callback, chunks=[], settings=None)
    return _ENGINE


class EspeakTTS:
    """espeak-ng voice (default 'en-us'); rate in words per minute (None = espeak's 175)."""

    def __init__(self, voice='en-us', rate=None):
        self.voice = voice
        self.rate = rate
        self.name = f"espeak:{voice}" + (f"@{rate}" if rate else "")

    def _apply_settings(self, eng):
        settings = (self.voice, self.rate or _DEFAULT_RATE)
        if eng['settings'] == settings:
            return
        lib, eng['settings'] = eng['lib'], None
        if lib.espeak_SetVoiceByName(self.voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng: unknown voice {self.voice!r}")
        if lib.espeak_SetParameter(_PARAM_RATE, settings[1], 0) != 0:
            raise RuntimeError(f"espeak-ng: cannot set rate {settings[1]}")
        eng['settings'] = settings

    def synthesize(self, text):
        """Speak text; return float32 mono at 16 kHz."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"EspeakTTS: empty text {text!r}")
        buf = text.encode('utf-8') + b'\0'
        with _LOCK:
            eng = _engine()
            self._apply_settings(eng)
            eng['chunks'] = []
            rc = eng['lib'].espeak_Synth(buf, len(buf), 0, 0, 0, _CHARS_UTF8, None, None)
            eng['lib'].espeak_Synchronize()
            chunks, eng['chunks'] = eng['chunks'], []
            sr = eng['native_sr']
        if rc != 0:
            raise RuntimeError(f"espeak_Synth returned error {rc} for text {text[:60]!r}")
        if not chunks:
            raise RuntimeError(f"espeak-ng produced no samples for text {text[:60]!r}")
        x = np.concatenate(chunks).astype(np.float32) / 32768.0
        g = gcd(sr, SAMPLING_RATE)
        return resample_poly(x, SAMPLING_RATE // g, sr // g).astype(np.float32)


_BACKENDS = {'espeak': EspeakTTS}


def get_tts(name='espeak', **kw):
    """Build a TTS backend by name ('espeak'); kw go to its constructor."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown TTS backend {name!r} (have: {', '.join(_BACKENDS)})")
    return _BACKENDS[name](**kw)
