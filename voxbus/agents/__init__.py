"""The agent SDK: ``Agent`` definitions and ``@tool`` functions (see ``agent`` and ``tool``)."""

from voxbus.agents.agent import Agent
from voxbus.agents.schema import SchemaError
from voxbus.agents.tool import Tool, ToolContext, ToolError, tool

__all__ = ["Agent", "SchemaError", "Tool", "ToolContext", "ToolError", "tool"]
