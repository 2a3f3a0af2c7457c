"""A tools module whose tool cannot be offered to a model (a parameter without a type hint)."""

from voxbus.agents import tool


@tool
async def lookup(order) -> str:  # type: ignore[no-untyped-def]
    """Look an order up."""
    return str(order)
