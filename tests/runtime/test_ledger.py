"""The turn ledger on its own: its rules, and the properties that matter, over many random
sessions (seeded: a failure names its seed)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from voxbus.contracts.control import TurnStart
from voxbus.runtime.ledger import (
    ReplyKey,
    TurnLedger,
    Verdict,
    Why,
    number_turn,
)

pytestmark = pytest.mark.fast


def test_a_guess_is_held_until_its_commit_then_goes() -> None:
    ledger: TurnLedger[list[str]] = TurnLedger()
    assert ledger.admit(1, 1) is Verdict.HOLD
    ledger.hold(1, 1, list).append("frame 0")
    commit = ledger.commit(1, 1)
    assert commit.adopted == ["frame 0"] and commit.dropped == ()
    assert ledger.admit(1, 1) is Verdict.GO
    assert ledger.admit(1, 2) is Verdict.DROP  # a guess the commit did not name


def test_a_voided_guess_is_dropped_and_its_held_parts_with_it() -> None:
    dropped: list[tuple[ReplyKey, Why]] = []
    ledger: TurnLedger[list[str]] = TurnLedger(on_drop=lambda k, _p, why: dropped.append((k, why)))
    ledger.hold(3, 1, list).append("a")
    assert ledger.void(3, 1) == ["a"]
    assert ledger.admit(3, 1) is Verdict.DROP
    assert not ledger.may_guess(3, 1)
    assert dropped == [(ReplyKey(3, 1), Why.VOIDED)]
    # the next guess of the turn is a new one
    assert ledger.admit(3, 2) is Verdict.HOLD


def test_the_reply_to_committed_words_goes_before_its_commit_arrives() -> None:
    ledger: TurnLedger[None] = TurnLedger()
    assert ledger.admit(2, 0) is Verdict.GO
    assert ledger.admit(0, 5) is Verdict.GO  # turn 0: not part of a turn


def test_an_interrupt_ends_live_guesses_of_its_turns_only() -> None:
    dropped: list[ReplyKey] = []
    ledger: TurnLedger[str] = TurnLedger(on_drop=lambda k, _p, _w: dropped.append(k))
    ledger.open(1, 1, "one")
    ledger.open(2, 1, "two")
    ledger.interrupt(1)
    assert dropped == [ReplyKey(1, 1)] and ledger.live(2, 1) == "two"
    assert ledger.stale(1) and not ledger.stale(2) and not ledger.stale(0)
    ledger.interrupt(0)  # the watermark never goes down
    assert ledger.interrupted == 1


def test_began_interrupts_earlier_turns_not_its_own() -> None:
    ledger: TurnLedger[str] = TurnLedger()
    ledger.open(4, 1, "guess of 4")
    ledger.began(5)
    assert ledger.heard == 5 and ledger.interrupted == 4 and ledger.live(4, 1) is None
    ledger.open(5, 1, "guess of 5")
    ledger.began(5)  # the same utterance again (a transcript of it): nothing more
    assert ledger.live(5, 1) == "guess of 5"


def test_a_guess_may_not_start_once_its_turn_is_committed_or_over() -> None:
    ledger: TurnLedger[str] = TurnLedger()
    ledger.commit(1, 0)
    assert not ledger.open(1, 1, "late guess")
    ledger.interrupt(2)
    assert not ledger.may_guess(2, 1) and ledger.may_guess(3, 1)


def test_guess_numbers_count_within_a_turn() -> None:
    ledger: TurnLedger[None] = TurnLedger()
    assert [ledger.next_guess(1), ledger.next_guess(1), ledger.next_guess(2)] == [1, 2, 1]


def test_reply_order() -> None:
    cmp = TurnLedger.compare
    assert cmp(ReplyKey(1, 1), ReplyKey(1, 2)).value == "newer"
    assert cmp(ReplyKey(1, 2), ReplyKey(1, 0)).value == "newer"  # committed words after guesses
    assert cmp(ReplyKey(1, 0), ReplyKey(1, 3)).value == "older"
    assert cmp(ReplyKey(2, 1), ReplyKey(1, 0)).value == "older"
    assert cmp(ReplyKey(2, 1), ReplyKey(2, 1)).value == "same"


def test_old_commits_are_forgotten() -> None:
    ledger: TurnLedger[None] = TurnLedger()
    for turn in range(1, 20):
        ledger.commit(turn, 0)
    assert ledger.committed_guess(19) == 0 and ledger.committed_guess(2) is None


# ---- turn numbers -----------------------------------------------------------------------------


def test_a_takeover_renumbers_nothing() -> None:
    """A replica that replays a turn's frames from a cold start gives it the stored number, even
    with its onset a few frames off; speech that is new gets one past every number known."""
    rng = random.Random(7)
    for _ in range(500):
        starts = []
        frame = 0
        for turn in range(1, rng.randint(1, 4) + 1):
            frame += rng.randint(60, 400)
            starts.append(TurnStart(turn, frame))
        stored = starts[-1].turn
        replayed = rng.choice(starts)
        jitter = rng.randint(-25, 25)
        # the new owner knows nothing of its own (current 0, nothing committed here)
        number, again = number_turn(replayed.frame + jitter, starts=starts, current=0,
                                    stored=stored, committed=0, heard_elsewhere=0,
                                    same_start_frames=25)
        assert (number, again) == (replayed.turn, True)
        # a turn committed here already is not replayed: new speech gets a new number
        number, again = number_turn(replayed.frame, starts=starts, current=stored,
                                    stored=stored, committed=stored, heard_elsewhere=0,
                                    same_start_frames=25)
        assert (number, again) == (stored + 1, False)
        heard = rng.randint(0, stored + 3)
        number, _ = number_turn(frame + 1000, starts=starts, current=rng.randint(0, stored),
                                stored=stored, committed=0, heard_elsewhere=heard,
                                same_start_frames=25)
        assert number == max(stored, heard) + 1


# ---- properties over random sessions ----------------------------------------------------------


@dataclass
class Sim:
    """The STT's ledger deciding guesses and commits; the LLM/TTS making parts of the replies it
    may make (a guess's once the guess went out, even after it was voided: the void travels; the
    reply to committed words once a commit named no guess); the bridge's ledger receiving the
    STT's voids and commits in order but late, with the parts interleaved; what the caller hears.
    """

    rng: random.Random
    stt: TurnLedger[int] = field(default_factory=TurnLedger)
    bridge: TurnLedger[list[tuple[int, int, int]]] = field(default_factory=TurnLedger)
    turn: int = 0
    in_flight: list[tuple[str, int, int]] = field(default_factory=list)  # voids and commits
    made: set[tuple[int, int]] = field(default_factory=set)  # replies someone may produce
    played: list[tuple[int, int, int]] = field(default_factory=list)  # (turn, guess, part)
    voided: set[tuple[int, int]] = field(default_factory=set)
    named: dict[int, int] = field(default_factory=dict)
    interrupted_when_played: list[tuple[int, int]] = field(default_factory=list)
    parts: dict[tuple[int, int], int] = field(default_factory=dict)
    dropped_payloads: list[tuple[ReplyKey, Why]] = field(default_factory=list)

    def part(self, turn: int, guess: int) -> None:
        n = self.parts.get((turn, guess), 0)
        self.parts[(turn, guess)] = n + 1
        part = (turn, guess, n)
        verdict = self.bridge.admit(turn, guess)
        if verdict is Verdict.HOLD:
            self.bridge.hold(turn, guess, list).append(part)
        elif verdict is Verdict.GO:
            self.play(part)

    def play(self, part: tuple[int, int, int]) -> None:
        if self.bridge.stale(part[0]):
            return  # the bridge's own stale check (and its stale-reply interrupt)
        self.played.append(part)
        self.interrupted_when_played.append((part[0], self.bridge.interrupted))

    def deliver(self) -> None:
        what, turn, guess = self.in_flight.pop(0)
        if what == "void":
            self.bridge.void(turn, guess)
        else:
            for part in self.bridge.commit(turn, guess).adopted or []:
                self.play(part)

    def step(self) -> None:
        rng, stt, bridge = self.rng, self.stt, self.bridge
        event = rng.choice(["speech", "guess", "void", "commit", "deliver", "deliver", "part",
                            "part", "part", "interrupt"])
        if event == "speech" or self.turn == 0:
            self.turn += 1
            bridge.began(self.turn)
        elif event == "guess":
            k = stt.next_guess(self.turn)
            if stt.open(self.turn, k, k):
                self.made.add((self.turn, k))  # its speculative EndOfTurn went out
        elif event == "void":
            live = stt.live_guesses()
            if live:
                key, _ = live[-1]
                stt.void(*key)
                self.in_flight.append(("void", *key))
                self.voided.add(key)
        elif event == "commit":
            if stt.committed >= self.turn:
                return
            numbers = [key.guess for key, _ in stt.live_guesses() if key.turn == self.turn]
            k = rng.choice([0, *numbers])
            stt.commit(self.turn, k)
            self.named[self.turn] = k
            self.in_flight.append(("commit", self.turn, k))
            if k == 0:
                self.made.add((self.turn, 0))
        elif event == "deliver":
            if self.in_flight:
                self.deliver()
        elif event == "part":
            if self.made:
                self.part(*rng.choice(sorted(self.made)))
        else:
            bridge.interrupt(rng.randint(0, self.turn))


@pytest.mark.parametrize("seed", range(200))
def test_properties_hold_over_random_sessions(seed: int) -> None:
    rng = random.Random(seed)
    sim = Sim(rng)
    sim.bridge.on_drop = lambda key, _p, why: sim.dropped_payloads.append((key, why))
    for _ in range(rng.randint(20, 120)):
        sim.step()
    for turn, guess, _n in sim.played:
        # a voided guess is never played
        assert (turn, guess) not in sim.voided, f"seed {seed}: voided guess played"
        # a guess is played only once its turn's commit named it
        if guess:
            assert sim.named.get(turn) == guess, f"seed {seed}: uncommitted guess played"
        # a reply to committed words is never played beside a named guess of its turn
        if guess == 0 and sim.named.get(turn):
            raise AssertionError(f"seed {seed}: two replies to turn {turn} played")
    # an interrupted turn's outputs are never played
    for turn, watermark in sim.interrupted_when_played:
        assert turn > watermark, f"seed {seed}: part of interrupted turn {turn} played"
    # no part is played twice
    assert len(set(sim.played)) == len(sim.played)
    # every held guess is either still live, adopted or dropped once: none is forgotten twice
    keys = [key for key, _ in sim.dropped_payloads]
    assert len(keys) == len(set(keys)), f"seed {seed}: a guess dropped twice"
