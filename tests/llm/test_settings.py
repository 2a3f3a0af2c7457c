"""LLM_* settings: defaults, parsing, validation."""

from __future__ import annotations

import pytest

from voxbus.runtime.settings import SettingsError
from voxbus.services.llm.settings import DEFAULT_SYSTEM_PROMPT, LlmSettings

pytestmark = pytest.mark.fast


def test_defaults_are_the_in_process_model_without_tools() -> None:
    s = LlmSettings.from_env({})
    assert (s.backend, s.n_threads, s.tools, s.system_prompt) == (
        "llama", 1, False, DEFAULT_SYSTEM_PROMPT
    )


def test_openai_backend_offers_tools_unless_told_not_to() -> None:
    env = {"LLM_BACKEND": "openai", "LLM_BASE_URL": "http://llm:8000", "LLM_API_KEY": "sekret-42"}
    s = LlmSettings.from_env(env)
    assert s.tools and s.base_url == "http://llm:8000" and "sekret-42" not in repr(s)
    assert not LlmSettings.from_env({**env, "LLM_TOOLS": "off"}).tools


@pytest.mark.parametrize(
    "env", [{"LLM_BACKEND": "gpt"}, {"LLM_N_THREADS": "0"}, {"LLM_TIMEOUT_S": "soon"}]
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        LlmSettings.from_env(env)
