"""``python -m voxbus.services.llm``: the LLM stage as a worker (``LLM_*``, ``VOXBUS_*``)."""

import asyncio

from voxbus.runtime import logging
from voxbus.runtime.serve import serve
from voxbus.runtime.settings import BusSettings
from voxbus.services.llm.llama_engine import check_model_file
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage, build_engine


def main() -> None:
    logging.configure()
    settings = LlmSettings.from_env()
    if settings.backend == "llama":  # a wrong LLM_MODEL_PATH is said before connecting
        check_model_file(settings.model_path)
    asyncio.run(serve(LlmStage(build_engine(settings), settings), BusSettings.from_env()))


if __name__ == "__main__":
    main()
