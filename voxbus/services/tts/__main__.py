"""The TTS worker: ``python -m voxbus.services.tts`` (settings from ``TTS_*`` and ``VOXBUS_*``)."""

from __future__ import annotations

import asyncio

from voxbus.runtime import logging
from voxbus.runtime.serve import serve
from voxbus.runtime.settings import BusSettings
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage


def main() -> None:
    logging.configure()
    asyncio.run(serve(TtsStage(TtsSettings.from_env()), BusSettings.from_env()))


if __name__ == "__main__":
    main()
