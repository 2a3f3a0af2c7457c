"""The TTS worker: ``python -m voxbus.services.tts`` (settings from ``TTS_*`` and ``VOXBUS_*``)."""

from __future__ import annotations

import asyncio

from voxbus.runtime import logging
from voxbus.runtime.serve import serve
from voxbus.runtime.settings import BusSettings, SettingsError
from voxbus.services.tts.models import check_model_path
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage


def main() -> None:
    logging.configure()
    settings = TtsSettings.from_env()
    if settings.model_path is not None:  # a wrong TTS_MODEL_PATH is said before connecting
        if settings.engine != "kokoro":
            raise SettingsError(f"TTS_MODEL_PATH is a Kokoro model, and TTS_ENGINE is "
                                f"{settings.engine} (it speaks with its packaged voice): set "
                                "TTS_ENGINE=kokoro, or leave TTS_MODEL_PATH out")
        check_model_path(settings.model_path)
    asyncio.run(serve(TtsStage(settings), BusSettings.from_env()))


if __name__ == "__main__":
    main()
