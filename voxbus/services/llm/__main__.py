"""``python -m voxbus.services.llm``: the LLM stage as a worker (``LLM_*``, ``VOXBUS_*``)."""

import asyncio

from voxbus.runtime import logging
from voxbus.runtime.serve import serve
from voxbus.runtime.settings import BusSettings
from voxbus.services.llm.models import resolve_model
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage, build_engine


def main() -> None:
    logging.configure()
    settings = LlmSettings.from_env()
    if settings.backend == "llama":  # a wrong LLM_MODEL_PATH, a missing model: said at once
        resolve_model(settings)
    stage = LlmStage(build_engine(settings), settings)
    asyncio.run(serve(stage, BusSettings.from_env(), before=stage.warm_default_agent))


if __name__ == "__main__":
    main()
