"""Speaker prompts for a zero-shot TTS server (docs/original.md §5.1, steps 2-3).

The original clones a different voice per question: the prompt for a question is clip
[question_id mod N] of a speaker set (one short Emilia clip per speaker, shuffled with seed 42), sent to
its CosyVoice2 service with the clip's transcript as the reference text. Here a `SpeakerPromptSet` holds
such a set, read from

  - a folder: every audio file (wav, flac, mp3, ogg, ...) under it, in path order, with its transcript
    in a .txt file of the same stem next to it; the speaker id is the file stem;
  - a manifest: a .jsonl file, one JSON object per line with the clip's path (`audio`, `wav_path` or
    `path`; relative paths are taken from the manifest's folder), its transcript (`text` or
    `transcript`) and optionally an id (`id`, `key` or `speaker`; default: the clip's stem).

and `pick(key)` rotates through it deterministically: the question number is the key's trailing digits
("mmlu@123" -> 123, the original's question_id) or, for a key without one, its CRC-32. The order is
the source order permuted by numpy.random.default_rng(shuffle_seed), the permutation
`datasets.Dataset.shuffle(seed=shuffle_seed)` applies, so a set given in the original's order rotates as
the original's did (shuffle_seed=None keeps the source order).

Every clip is checked when the set is loaded (present, decodable by soundfile, a non-empty transcript,
unique ids); a clip that disappears later fails its synthesis with the path in the message.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

AUDIO_EXTENSIONS = frozenset({'.wav', '.flac', '.mp3', '.ogg', '.oga', '.opus', '.aif', '.aiff', '.au', '.w64'})
AUDIO_FIELDS = ('audio', 'wav_path', 'path')
TEXT_FIELDS = ('text', 'transcript')
ID_FIELDS = ('id', 'key', 'speaker')
DEFAULT_SHUFFLE_SEED = 42   # the original's speaker-set shuffle


class SpeakerPromptError(ValueError):
    """A speaker set or one of its clips that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class SpeakerPrompt:
    """One speaker: an id, the transcript of its prompt clip and the clip's path."""
    id: str
    text: str
    audio_path: str

    def audio_bytes(self) -> bytes:
        """The clip file's bytes (what the server receives); a clear error when it cannot be read."""
        try:
            data = Path(self.audio_path).read_bytes()
        except OSError as e:
            raise SpeakerPromptError(f"speaker {self.id!r}: cannot read prompt clip {self.audio_path}: "
                                     f"{e.strerror or e}") from e
        if not data:
            raise SpeakerPromptError(f"speaker {self.id!r}: prompt clip {self.audio_path} is empty")
        return data


def question_number(key: Any) -> int:
    """The number a key rotates by: its trailing digits ('mmlu@123' -> 123), else the CRC-32 of the key."""
    m = re.search(r'(\d+)$', str(key))
    return int(m.group(1)) if m else zlib.crc32(str(key).encode('utf-8'))


def check_clip(path: Union[str, os.PathLike], where: str) -> None:
    """Raise SpeakerPromptError unless path is an existing file soundfile can decode."""
    import soundfile as sf
    p = Path(path)
    if not p.is_file():
        raise SpeakerPromptError(f"{where}: prompt clip {p} does not exist")
    try:
        info = sf.info(str(p))
    except Exception as e:   # soundfile raises its own error type, RuntimeError or OSError by version
        raise SpeakerPromptError(f"{where}: prompt clip {p} is not readable audio ({e})") from e
    if info.frames <= 0:
        raise SpeakerPromptError(f"{where}: prompt clip {p} has no samples")


def _first(obj: Mapping[str, Any], fields: Sequence[str]) -> Any:
    return next((obj[f] for f in fields if obj.get(f) not in (None, '')), None)


class SpeakerPromptSet:
    """An ordered set of SpeakerPrompts; pick(key) gives a question's speaker (module docstring)."""

    def __init__(self, prompts: Iterable[SpeakerPrompt], shuffle_seed: Optional[int] = DEFAULT_SHUFFLE_SEED,
                 source: Union[None, str, os.PathLike] = None, check: bool = True) -> None:
        prompts = list(prompts)
        self.source = str(source) if source is not None else None
        where = self.source or 'speaker set'
        if not prompts:
            raise SpeakerPromptError(f"{where}: no speaker prompt found")
        seen = {}
        for sp in prompts:
            if sp.id in seen:
                raise SpeakerPromptError(f"{where}: speaker id {sp.id!r} used twice "
                                         f"({seen[sp.id]} and {sp.audio_path})")
            seen[sp.id] = sp.audio_path
            if not sp.text.strip():
                raise SpeakerPromptError(f"{where}: speaker {sp.id!r} ({sp.audio_path}) has an empty transcript")
            if check:
                check_clip(sp.audio_path, f"{where}, speaker {sp.id!r}")
        self.shuffle_seed = shuffle_seed
        if shuffle_seed is not None:
            prompts = [prompts[i] for i in np.random.default_rng(shuffle_seed).permutation(len(prompts))]
        self.prompts: List[SpeakerPrompt] = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> SpeakerPrompt:
        return self.prompts[i]

    def pick(self, key: Any) -> SpeakerPrompt:
        """The speaker of the question with this key: prompts[question_number(key) mod len]."""
        return self.prompts[question_number(key) % len(self.prompts)]

    def fingerprint(self) -> str:
        """A short digest of the rotation (ids, transcripts and order): equal sets pick equal speakers."""
        h = hashlib.sha256(json.dumps([[p.id, p.text] for p in self.prompts]).encode('utf-8'))
        return h.hexdigest()[:16]

    @classmethod
    def from_dir(cls, folder: Union[str, os.PathLike], **kw: Any) -> SpeakerPromptSet:
        """Audio files under folder (path order), each with a same-stem .txt transcript."""
        root = Path(folder)
        if not root.is_dir():
            raise SpeakerPromptError(f"speaker folder {root} is not a directory")
        prompts = []
        for p in sorted(root.rglob('*')):
            if not (p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
                continue
            txt = p.with_suffix('.txt')
            if not txt.is_file():
                raise SpeakerPromptError(f"{root}: prompt clip {p} has no transcript {txt.name} next to it")
            prompts.append(SpeakerPrompt(p.stem, txt.read_text(encoding='utf-8').strip(), str(p)))
        return cls(prompts, source=root, **kw)

    @classmethod
    def from_manifest(cls, path: Union[str, os.PathLike], **kw: Any) -> SpeakerPromptSet:
        """A .jsonl manifest (module docstring); an unusable line is an error naming the line."""
        path = Path(path)
        if not path.is_file():
            raise SpeakerPromptError(f"speaker manifest {path} does not exist")
        prompts = []
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise SpeakerPromptError(f"{where}: not JSON ({e})") from e
                if not isinstance(obj, dict):
                    raise SpeakerPromptError(f"{where}: a JSON {type(obj).__name__}, not an object")
                audio, text = _first(obj, AUDIO_FIELDS), _first(obj, TEXT_FIELDS)
                if not isinstance(audio, str):
                    raise SpeakerPromptError(f"{where}: no clip path (one of the fields {', '.join(AUDIO_FIELDS)})")
                if not isinstance(text, str) or not text.strip():
                    raise SpeakerPromptError(f"{where}: no transcript (one of the fields {', '.join(TEXT_FIELDS)})")
                clip = Path(audio) if Path(audio).is_absolute() else path.parent / audio
                sid = _first(obj, ID_FIELDS)
                prompts.append(SpeakerPrompt(str(sid) if sid is not None else clip.stem, text.strip(), str(clip)))
        return cls(prompts, source=path, **kw)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], **kw: Any) -> SpeakerPromptSet:
        """A folder (from_dir) or a manifest file (from_manifest)."""
        p = Path(path)
        if p.is_dir():
            return cls.from_dir(p, **kw)
        if p.is_file():
            return cls.from_manifest(p, **kw)
        raise SpeakerPromptError(f"speaker prompts {p}: no such folder or manifest file")
