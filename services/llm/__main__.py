"""``python -m services.llm``: the LLM stage as a worker (settings: ``LLM_*``, ``VOXBUS_*``)."""

import asyncio

from runtime import logging
from runtime.serve import serve
from runtime.settings import BusSettings
from services.llm.settings import LlmSettings
from services.llm.stage import LlmStage, build_engine


def main() -> None:
    logging.configure()
    settings = LlmSettings.from_env()
    asyncio.run(serve(LlmStage(build_engine(settings), settings), BusSettings.from_env()))


if __name__ == "__main__":
    main()
