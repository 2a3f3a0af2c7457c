"""The TTS worker: ``python -m services.tts`` (settings from ``TTS_*`` and ``VOXBUS_*``)."""

from __future__ import annotations

import asyncio

from runtime import logging
from runtime.serve import serve
from runtime.settings import BusSettings
from services.tts.settings import TtsSettings
from services.tts.stage import TtsStage


def main() -> None:
    logging.configure()
    asyncio.run(serve(TtsStage(TtsSettings.from_env()), BusSettings.from_env()))


if __name__ == "__main__":
    main()
