"""Loading a builder's module (a file path or a dotted name) and finding its agents and tools.

Whatever goes wrong (no such file, a syntax error, an import that fails inside, a tool whose
signature cannot be offered to a model) becomes one ``UserError`` line naming the module and
the cause."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from voxbus.agents.agent import Agent
from voxbus.agents.schema import SchemaError
from voxbus.agents.tool import Tool
from voxbus.errors import UserError


@dataclass(frozen=True)
class AgentModule:
    """The agents and tools one module defines."""

    source: str
    agents: dict[str, Agent]
    tools: dict[str, Tool]

    def definitions(self) -> list[object]:
        return [a.definition(self.source) for a in self.agents.values()]


def _where(exc: BaseException, path: str) -> str:
    """`` (file.py line N)`` for the deepest frame inside the builder's file, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def import_module(spec: str) -> ModuleType:
    """``spec`` is a ``.py`` file or a dotted module name."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        if not path.is_file():
            raise UserError(f"tools module {spec}: no such file")
        name = "voxbus_agents_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"tools module {spec}: not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except SchemaError as exc:
            del sys.modules[name]
            raise UserError(f"tools module {spec}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the builder's code: said in one line
            del sys.modules[name]
            raise UserError(f"tools module {spec} failed to import: {type(exc).__name__}: "
                            f"{exc}{_where(exc, str(path))}") from None
        return module
    try:
        return importlib.import_module(spec)
    except SchemaError as exc:
        raise UserError(f"tools module {spec}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"tools module {spec} failed to import: {type(exc).__name__}: "
                        f"{exc}") from None


def load(spec: str) -> AgentModule:
    """The agents and tools of module ``spec`` (its module-level ``Agent`` and ``@tool`` objects,
    and every tool its agents list)."""
    module = import_module(spec)
    agents: dict[str, Agent] = {}
    tools: dict[str, Tool] = {}

    def add_tool(t: Tool) -> None:
        other = tools.get(t.name)
        if other is not None and other is not t:
            raise UserError(f"tools module {spec}: two different tools are named {t.name!r}")
        tools[t.name] = t

    for value in vars(module).values():
        if isinstance(value, Agent):
            if value.name in agents and agents[value.name] is not value:
                raise UserError(f"tools module {spec}: two agents are named {value.name!r}")
            agents[value.name] = value
            for t in value.tools:
                add_tool(t)
        elif isinstance(value, Tool):
            add_tool(value)
    if not agents and not tools:
        raise UserError(f"tools module {spec} defines no Agent and no @tool")
    return AgentModule(source=spec, agents=agents, tools=tools)
