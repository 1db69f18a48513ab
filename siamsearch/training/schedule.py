"""How long a run is and how its learning rate moves: a schedule that scales with the data.

- Without ``epochs`` and without a time budget, a run has :data:`AUTO_EPOCHS` epochs of at least
  ``MIN_STEPS / AUTO_EPOCHS`` and at most ``MAX_STEPS / AUTO_EPOCHS`` steps each: a small folder
  still gets :data:`MIN_STEPS` steps, a large one stops after :data:`MAX_STEPS` unless asked for more.
- With a budget (``max_minutes``) and no ``epochs``, the run trains until the budget is spent and
  the learning rate follows the clock, reaching zero when the budget ends.
- With both, the run ends at whichever limit comes first, and the learning rate follows that one:
  the schedule's progress is the larger of the step fraction and the time fraction.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

#: Epochs of a run given neither ``epochs`` nor a time budget.
AUTO_EPOCHS = 10
#: Fewest and most optimisation steps of such a run (the epoch length is stretched or shortened).
MIN_STEPS, MAX_STEPS = 500, 20000
#: Share of a budget-only run spent warming the learning rate up.
BUDGET_WARMUP = 0.05


def lr_factor(fraction: float, warmup: float) -> float:
    """Learning-rate multiplier at ``fraction`` (0..1) of a run: linear warm-up, then cosine to 0."""
    if fraction < warmup:
        return max(fraction / warmup, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (fraction - warmup) / max(1e-9, 1.0 - warmup))))


@dataclass
class Plan:
    """A run's length: ``epochs`` (None: until the budget ends), ``steps_per_epoch``, the budget in
    seconds (None: none) and the warm-up share; ``total_steps`` is None when only the clock limits it."""

    epochs: Optional[int]
    steps_per_epoch: int
    budget_s: Optional[float]
    warmup: float
    # seconds spent by an interrupted run (resume) and the last validation's duration, kept free at the
    # end so that the final epoch's validation also fits in the budget
    before_s: float = 0.0
    reserve_s: float = 0.0
    start: float = field(default_factory=time.time)

    @property
    def total_steps(self) -> Optional[int]:
        return None if self.epochs is None else self.epochs * self.steps_per_epoch

    def elapsed(self) -> float:
        return self.before_s + time.time() - self.start

    def fraction(self, step: int) -> float:
        """Share of the run done: the larger of the step and the time fraction (whichever limit ends it)."""
        parts = [0.0]
        if self.total_steps:
            parts.append(step / self.total_steps)
        if self.budget_s:
            parts.append(self.elapsed() / self.budget_s)
        return min(1.0, max(parts))

    def out_of_time(self) -> bool:
        return bool(self.budget_s) and self.elapsed() + self.reserve_s >= self.budget_s


def plan_run(batches_per_pass: int, epochs: Optional[int], steps_per_epoch: Optional[int],
             max_minutes: Optional[float]) -> Plan:
    """Decide the run's length from the data (``batches_per_pass``: batches in one pass over the
    training images) and the limits given; see the module docstring for the rules."""
    budget_s = None if max_minutes is None else 60.0 * float(max_minutes)
    if steps_per_epoch is None:
        steps_per_epoch = max(1, int(batches_per_pass))
        if epochs is None:
            steps_per_epoch = max(steps_per_epoch, math.ceil(MIN_STEPS / AUTO_EPOCHS))
            if budget_s is None:
                steps_per_epoch = min(steps_per_epoch, MAX_STEPS // AUTO_EPOCHS)
    if epochs is None and budget_s is None:
        epochs = AUTO_EPOCHS
    warmup = min(0.2, 1.0 / epochs) if epochs is not None else BUDGET_WARMUP
    return Plan(epochs=epochs, steps_per_epoch=int(steps_per_epoch), budget_s=budget_s, warmup=warmup)
