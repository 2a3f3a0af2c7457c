"""The turn ledger: one session's turn state, and the one place its rules are written.

Pure and synchronous: no I/O, no clock, no tasks. Every stage's session scope has one (the STT
numbers and commits guesses on it, the LLM starts, adopts and drops replies on it, the TTS orders
replies on it, the runtime reads staleness from it) and so does the bridge's caller session (it
holds and plays guesses on it). Callers feed it what happened and act on what it answers.

The words:

- **Turn** ``n``: the user's ``n``-th utterance (1, 2, ...). 0 is "not part of a turn" (the echo
  stage's frames, a greeting): never stale, never held, never interrupted by turn logic.
- **Guess** ``k`` of turn ``n``: the user fell silent and the STT published its words as a
  speculative ``EndOfTurn`` before the turn is committed; replies to it carry ``speculation=k``.
  ``k`` counts from 1 within the turn. Replies to committed words nobody guessed carry 0.
- **Commit**: the turn's committed ``EndOfTurn`` names the guess whose words it confirms (or 0).
  The named guess is the reply; every other guess of the turn, and of earlier turns, is dropped.
- **Void**: ``TurnResumed`` (the user went on speaking) kills a guess before any commit.
- **Interrupt** (watermark): every turn ``<= interrupted`` is over; what it still produces is stale
  and is never published or played. The watermark only rises.
- **Began**: the user started utterance ``n``: replies to turns before ``n`` are interrupted.
- **Backchannel**: utterance ``n`` was only "mhm" or "okay" said over a reply
  (``runtime.backchannel``): it is heard (the turns after it keep their numbers) but interrupts
  nothing, and gets no reply of its own.

Each live guess may carry a payload of the caller's (the bridge's held frames, the LLM's reply
task, the STT's decode): what the ledger answers includes the payloads to release or to drop, and
every drop, whoever caused it (a commit, a void, the runtime's interrupt), also goes to the
owner's ``on_drop``, so a payload cannot be forgotten.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from voxbus.contracts.control import TurnStart

G = TypeVar("G")

#: Commits remembered (older turns' parts are stale by then).
KEEP_COMMITS = 4
#: ``rank`` of the reply to committed words nobody guessed: after every guess of its turn.
UNGUESSED = 1 << 30


class Verdict(enum.Enum):
    """What to do with a part of a reply (a frame, a text chunk, its end)."""

    GO = "go"  # play / publish it now
    HOLD = "hold"  # a guess's, before its turn is committed: keep it unplayed
    DROP = "drop"  # stale, voided, or a guess the commit did not name


class ReplyKey(NamedTuple):
    """Names one reply: (turn, guess); guess 0 is the reply to committed words."""

    turn: int
    guess: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        """Orders the replies a session may get: a later turn after an earlier one; within a turn
        a later guess replaces an earlier one, and the reply to committed words nobody guessed
        comes after every guess."""
        return (self.turn, self.guess or UNGUESSED)


class Why(enum.Enum):
    """Why a live guess was dropped (``TurnLedger.on_drop``; logged as its value)."""

    VOIDED = "resumed"  # the user went on speaking
    NOT_COMMITTED = "not_committed"  # the turn's commit named another guess, or none
    INTERRUPTED = "interrupted"  # its turn is over (an interrupt, or the user began a new turn)
    REPLACED = "replaced"  # the owner dropped it for a newer one, or closed


class Order(enum.Enum):
    """An incoming reply compared with the current one (``TurnLedger.compare``)."""

    SAME = "same"
    OLDER = "older"  # stale: the current one replaced it already
    NEWER = "newer"  # it replaces the current one


@dataclass(frozen=True)
class Commit(Generic[G]):
    """What a commit decided: the named guess's payload (if it was live here) and the guesses
    it ended."""

    turn: int
    guess: int
    adopted: G | None = None
    dropped: tuple[tuple[ReplyKey, G], ...] = ()


@dataclass
class TurnLedger(Generic[G]):
    """One session's turns as one worker (or the bridge) knows them."""

    #: Turns up to this one are over (the interrupt watermark).
    interrupted: int = 0
    #: The newest turn the user began (the bridge's ``began``).
    heard: int = 0
    #: The newest turn committed here.
    committed: int = 0
    _commits: dict[int, int] = field(default_factory=dict)  # turn -> the guess it named
    _voided: set[ReplyKey] = field(default_factory=set)
    _live: dict[ReplyKey, G] = field(default_factory=dict)  # guesses neither dropped nor committed
    _numbered: dict[int, int] = field(default_factory=dict)  # turn -> last guess number given
    #: Told of every live guess dropped, whatever dropped it (not of the one a commit adopts).
    on_drop: Callable[[ReplyKey, G, Why], None] | None = None

    # ---- staleness ------------------------------------------------------------------------------

    def stale(self, turn: int) -> bool:
        """Output of turn ``turn`` is not to be published or played: the turn was interrupted
        (or the user began a later one)."""
        return 0 < turn <= self.interrupted

    def interrupt(self, turn: int) -> list[tuple[ReplyKey, G]]:
        """Turns up to ``turn`` are over. Returns the live guesses this ends."""
        self.interrupted = max(self.interrupted, turn)
        return self._drop(lambda key: key.turn <= turn, Why.INTERRUPTED)

    def began(self, turn: int) -> list[tuple[ReplyKey, G]]:
        """The user began utterance ``turn``: every reply to an earlier turn is over. Returns
        the live guesses this ends (a guess of ``turn`` itself stays: its words are the ones
        being said)."""
        if turn <= 0:
            return []
        self.heard = max(self.heard, turn)
        return self.interrupt(turn - 1)

    def backchannel(self, turn: int) -> None:
        """Utterance ``turn`` was a backchannel said over a reply: heard, but the reply it was
        said over goes on (the watermark stays where it is)."""
        self.heard = max(self.heard, turn)

    # ---- guesses --------------------------------------------------------------------------------

    def next_guess(self, turn: int) -> int:
        """The number of the next guess of ``turn`` (1, 2, ... within the turn)."""
        n = self._numbered.get(turn, 0) + 1
        self._numbered = {t: k for t, k in self._numbered.items() if t >= turn - 1}
        self._numbered[turn] = n
        return n

    def may_guess(self, turn: int, guess: int) -> bool:
        """A guess may start (or publish): its turn is neither over nor committed, and the
        guess was not voided."""
        return (turn > self.committed and not self.stale(turn) and guess > 0
                and ReplyKey(turn, guess) not in self._voided)

    def open(self, turn: int, guess: int, payload: G) -> bool:
        """Record a live guess with its payload; False (nothing recorded) where it may not
        start (``may_guess``)."""
        if not self.may_guess(turn, guess):
            return False
        self._live[ReplyKey(turn, guess)] = payload
        return True

    def live(self, turn: int, guess: int) -> G | None:
        """The payload of live guess ``k`` of ``turn``."""
        return self._live.get(ReplyKey(turn, guess))

    def live_guesses(self) -> list[tuple[ReplyKey, G]]:
        return sorted(self._live.items(), key=lambda kv: kv[0])

    def void(self, turn: int, guess: int) -> G | None:
        """The user went on: guess ``k`` of ``turn`` is dead for good (parts of it that come
        later are dropped; it cannot start again). Returns its payload if it was live."""
        key = ReplyKey(turn, guess)
        self._voided.add(key)
        gone = self._drop(lambda k: k == key, Why.VOIDED)
        return gone[0][1] if gone else None

    def drop_guesses(self) -> list[tuple[ReplyKey, G]]:
        """End every live guess: replaced by a newer one, or the session closing. They are
        forgotten, not voided."""
        return self._drop(lambda _key: True, Why.REPLACED)

    def commit(self, turn: int, guess: int) -> Commit[G]:
        """Turn ``turn`` is committed, naming guess ``guess`` (0: none). The named guess's payload
        is handed over; every other live guess of this turn or an earlier one is dropped."""
        self._commits[turn] = guess
        for t in [t for t in self._commits if t < turn - KEEP_COMMITS]:
            del self._commits[t]
        self.committed = max(self.committed, turn)
        self._voided = {key for key in self._voided if key.turn > turn}
        adopted = self._live.pop(ReplyKey(turn, guess), None) if guess else None
        return Commit(turn=turn, guess=guess, adopted=adopted,
                      dropped=tuple(self._drop(lambda key: key.turn <= turn,
                                               Why.NOT_COMMITTED)))

    def committed_guess(self, turn: int) -> int | None:
        """The guess the commit of ``turn`` named (0: none), or None if not committed here."""
        return self._commits.get(turn)

    # ---- parts of replies -----------------------------------------------------------------------

    def admit(self, turn: int, guess: int) -> Verdict:
        """What to do with a part of reply (``turn``, ``guess``) as it arrives: a committed
        turn's named reply goes, its other guesses are dropped; the reply to committed words
        (guess 0) goes (its commit is on its way); a live guess's part is held until its commit;
        a voided or stale guess's is dropped. (A part that goes may still be stale: the caller
        checks ``stale`` where going too late has consequences of its own.)"""
        if turn <= 0:
            return Verdict.GO
        named = self._commits.get(turn)
        if named is not None:
            return Verdict.GO if guess == named else Verdict.DROP
        if guess == 0:
            return Verdict.GO
        if ReplyKey(turn, guess) in self._voided or self.stale(turn):
            return Verdict.DROP
        return Verdict.HOLD

    def hold(self, turn: int, guess: int, make: Callable[[], G]) -> G:
        """The payload of guess ``k`` of ``turn`` (made, and the guess recorded live, if new):
        where the parts ``admit`` holds are kept. Call only after ``admit`` said HOLD."""
        key = ReplyKey(turn, guess)
        payload = self._live.get(key)
        if payload is None:
            payload = self._live[key] = make()
        return payload

    @staticmethod
    def compare(current: ReplyKey, incoming: ReplyKey) -> Order:
        """Where ``incoming`` stands against the reply being produced (``ReplyKey.rank``)."""
        if incoming.rank == current.rank:
            return Order.SAME
        return Order.OLDER if incoming.rank < current.rank else Order.NEWER

    # ---- internals ------------------------------------------------------------------------------

    def _drop(self, which: Callable[[ReplyKey], bool], why: Why) -> list[tuple[ReplyKey, G]]:
        gone = [(key, p) for key, p in self.live_guesses() if which(key)]
        for key, payload in gone:
            del self._live[key]
            if self.on_drop is not None:
                self.on_drop(key, payload, why)
        return gone


# ---- turn numbers -------------------------------------------------------------------------------


def number_turn(
    frame: int, *, starts: Iterable[TurnStart], current: int, stored: int, committed: int,
    heard_elsewhere: int, same_start_frames: int,
) -> tuple[int, bool]:
    """The number of the turn whose speech starts at audio frame ``frame``: (number, replayed).

    A takeover renumbers nothing: a stored turn that started there (within ``same_start_frames``)
    and was not committed here yet is that turn again (its frames are being replayed). Otherwise
    the turn is one past every turn known: this worker's ``current``, the ``stored`` one and the
    caller side's ``heard_elsewhere``."""
    for start in starts:
        if abs(start.frame - frame) <= same_start_frames and start.turn > committed:
            return start.turn, True
    return max(current, stored, heard_elsewhere) + 1, False
