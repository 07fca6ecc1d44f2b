"""What a command left behind, as the CLI reports it: exit codes (DESIGN.md) and a
CommandResult that carries the state and how the command got there."""

from __future__ import annotations

from dataclasses import dataclass

from rollout.state import ModelState, Phase

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_ROLLED_BACK = 3
EXIT_PAUSED = 4
EXIT_LOCKED = 5
# `status --watch` only: the rollout is in progress but no process moves it any more (the run it
# followed died and no controller leads); `rollout start` of the same version resumes it.
EXIT_UNHELD = 6


def exit_code_for(phase: Phase) -> int:
    """0 promoted (or completed), 3 rolled back / aborted / failed / rejected, 4 paused; 1 otherwise."""
    if phase in (Phase.PROMOTED, Phase.COMPLETED):
        return EXIT_OK
    if phase is Phase.PAUSED:
        return EXIT_PAUSED
    if phase in (Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED, Phase.REJECTED):
        return EXIT_ROLLED_BACK
    return EXIT_ERROR


@dataclass(frozen=True)
class CommandResult:
    """The state a command left, and whether it acted itself or something else did.

    ``noop``: start found the version already stable. ``handed_over``: another process
    holding the model accepted the request. ``detached``: the rollout was recorded and
    begun, and a controller (or a later command) carries it on."""

    state: ModelState
    noop: bool = False
    handed_over: bool = False
    detached: bool = False

    @property
    def phase(self) -> Phase | None:
        return self.state.rollout.phase if self.state.rollout is not None else None

    @property
    def exit_code(self) -> int:
        r = self.state.rollout
        if self.noop or r is None:
            return EXIT_OK
        if r.phase is Phase.PROGRESSING or (self.detached and r.phase is Phase.PAUSED):
            return EXIT_OK  # accepted by the holder, or carried on by a controller
        return exit_code_for(r.phase)
