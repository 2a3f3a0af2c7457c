"""``python -m voxbus.services.stt``: one STT worker (``STT_*``, ``VOXBUS_*``, ``NATS_*``)."""

import asyncio

from voxbus.runtime import logging
from voxbus.runtime.serve import serve
from voxbus.runtime.settings import BusSettings
from voxbus.services.stt.models import check_model
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage


def main() -> None:
    logging.configure()
    settings = SttSettings.from_env()
    check_model(settings.model)  # a wrong STT_MODEL is said before connecting
    stage = SttStage(settings)
    asyncio.run(serve(stage, BusSettings.from_env()))


if __name__ == "__main__":
    main()
