"""A session's turn numbers on the bus (``<session>.stt`` in the region's state bucket): the last
turn, so a replica that takes the session over never reuses a number, and where the last turns
started, so one that replays their frames gives them the same numbers (``ledger.number_turn``)."""

from __future__ import annotations

import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from voxbus.contracts import control
from voxbus.runtime.stage import Retryable, StageBus

log = structlog.get_logger("voxbus.stt")


def state_key(session: str) -> str:
    """The session's key in the region's state bucket (``<session>.stt``)."""
    return control.state_key(session, control.STT_STATE)


async def read_state(bus: StageBus, region: str, session: str) -> control.SttTurnState:
    """The session's turn state in the state bucket (turn 0 if none). Raises Retryable."""
    try:
        kv = await bus.state(region)
        entry = await kv.get(state_key(session))
    except KeyNotFoundError:
        return control.SttTurnState(turn=0)
    except (NatsError, TimeoutError) as e:
        raise Retryable(f"state bucket unavailable: {e}") from e
    try:
        return control.decode_stt_state(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("bad_turn_state", session=session)
        return control.SttTurnState(turn=0)


async def save_state(bus: StageBus, region: str, session: str,
                     state: control.SttTurnState) -> None:
    """Store the session's turn state. Bus errors propagate."""
    kv = await bus.state(region)
    await kv.put(state_key(session), control.encode_json(state))
