"""Which bus errors pass with time: a timeout, a connection that is reconnecting or closed for a
moment, no responder (JetStream not up yet, or a stream gone with an empty store), a server
that answers 503. Those are retried; everything else is a real failure of the request."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors as js_errors

_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,  # nats.errors.TimeoutError too
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
    js_errors.ServerError,
    ConnectionError,
)

#: JetStream's "stream not found" (a store that came back empty): provisioning fixes it.
STREAM_NOT_FOUND = 10059
#: JetStream's "consumer not found": a worker's consumer, gone with an empty store, that its
#: pull consumer makes again (``PullConsumer``'s ``on_missing``).
CONSUMER_NOT_FOUND = 10014


def missing_stream(e: BaseException) -> bool:
    """The stream or bucket behind a request is gone (or never answered: no responders)."""
    if isinstance(e, js_errors.BucketNotFoundError | nats.errors.NoRespondersError):
        return True
    return (isinstance(e, js_errors.NotFoundError) and not isinstance(e, js_errors.KeyValueError)
            and e.err_code == STREAM_NOT_FOUND)


def missing_consumer(e: BaseException) -> bool:
    """The consumer named in a request is gone (its stream is there)."""
    return (isinstance(e, js_errors.NotFoundError) and not isinstance(e, js_errors.KeyValueError)
            and e.err_code == CONSUMER_NOT_FOUND)


def transient(e: BaseException) -> bool:
    return isinstance(e, _TRANSIENT) or missing_stream(e)
