"""``python -m services.stt``: one STT worker (settings: ``STT_*``, ``VOXBUS_*``, ``NATS_*``)."""

import asyncio

from runtime import logging
from runtime.serve import serve
from runtime.settings import BusSettings
from services.stt.settings import SttSettings
from services.stt.stage import SttStage


def main() -> None:
    logging.configure()
    stage = SttStage(SttSettings.from_env())
    asyncio.run(serve(stage, BusSettings.from_env()))


if __name__ == "__main__":
    main()
