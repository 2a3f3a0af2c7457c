"""Decode audio spans in a fresh process and print the texts as JSON lines.

``python -m tests.stt.spans_probe SPANS.npz COMPUTE_TYPE``: the environment (for example
``CT2_FORCE_CPU_ISA`` and ``ONEDNN_MAX_CPU_ISA``) chooses the CPU kernels, as another machine's
CPU would; they are read when CTranslate2 loads, so this must be its own process.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from voxbus.services.stt.engine import WhisperEngine


def main() -> None:
    path, compute_type = sys.argv[1], sys.argv[2]
    spans = np.load(path)
    engine = WhisperEngine(compute_type=compute_type)
    for name in sorted(spans.files):
        print(json.dumps({"span": name, "text": engine.transcribe(spans[name]).text}), flush=True)


if __name__ == "__main__":
    main()
