"""The file to pass as ``--external_plugins`` to ``swift rlhf``: registers the TARS rewards and trainer.

It sits in a folder of its own because ms-swift puts the plugin's folder on ``sys.path``.
"""
import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from trainer.registry import register_with_swift  # noqa: E402

register_with_swift()
