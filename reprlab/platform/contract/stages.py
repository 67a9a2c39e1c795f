"""Training in stages: consecutive runs of epochs that change the batch (patch size, batch size)
and start fresh optimizers, keeping the weights (the exposure-correction schedule; style
transfer's staged training uses the same).

``Stage(patch, batch, epochs, drop, adv_from, iterations)``: images of side ``patch`` in global
batches of ``batch``, for ``epochs`` epochs of ``iterations`` steps; learning rates halve every
``drop`` epochs of the stage (None: never); an adversarial term from the stage's epoch
``adv_from`` (1-based; None: none).
:class:`StageSchedule` maps a run's epoch (1-based, across stages) to its stage and the epoch
within it. A method keeps the current stage index in its checkpoint and rebuilds its optimizers
at a stage's first epoch (``on_epoch_start``) or, resuming, before loading their state.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patch: int = Field(ge=8, description="side of the training patches")
    batch: int = Field(ge=1, description="global batch")
    epochs: int = Field(ge=1)
    drop: int | None = Field(None, ge=1, description="halve the learning rates every `drop` epochs of the stage")
    adv_from: int | None = Field(None, ge=1, description="the stage's epoch (1-based) the adversarial term starts")
    iterations: int | None = Field(None, ge=1, description="iterations per epoch (default: the method's)")


@dataclass(frozen=True)
class StageSchedule:
    stages: tuple[Stage, ...]

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def locate(self, epoch: int) -> tuple[int, int]:
        """(stage index, epoch within the stage, 1-based) of run epoch ``epoch`` (1-based); epochs
        past the last stage continue the last stage."""
        start = 0
        for i, s in enumerate(self.stages):
            if epoch <= start + s.epochs or i == len(self.stages) - 1:
                return i, epoch - start
            start += s.epochs
        raise ValueError("a schedule needs at least one stage")

    def first_adversarial(self) -> int | None:
        """The first stage with an adversarial term (where the discriminator is created)."""
        return next((i for i, s in enumerate(self.stages) if s.adv_from is not None), None)

    def halvings(self, epoch_in_stage: int, stage: int) -> int:
        """How often the learning rates were halved before the stage's epoch ``epoch_in_stage``."""
        drop = self.stages[stage].drop
        return 0 if drop is None else (epoch_in_stage - 1) // drop
