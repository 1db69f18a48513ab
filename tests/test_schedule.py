import time

import pytest

from siamsearch.training.schedule import AUTO_EPOCHS, MAX_STEPS, MIN_STEPS, Plan, lr_factor, plan_run


def test_small_data_gets_the_minimum_number_of_steps():
    plan = plan_run(batches_per_pass=2, epochs=None, steps_per_epoch=None, max_minutes=None)
    assert plan.epochs == AUTO_EPOCHS and plan.total_steps >= MIN_STEPS


def test_large_data_is_capped_unless_asked():
    plan = plan_run(batches_per_pass=100_000, epochs=None, steps_per_epoch=None, max_minutes=None)
    assert plan.total_steps <= MAX_STEPS
    asked = plan_run(batches_per_pass=100_000, epochs=3, steps_per_epoch=None, max_minutes=None)
    assert asked.total_steps == 300_000  # explicit epochs: a pass each, as asked
    assert plan_run(7, 4, 5, None).total_steps == 20


def test_budget_alone_runs_until_it_ends_and_the_lr_ends_with_it():
    plan = plan_run(batches_per_pass=3, epochs=None, steps_per_epoch=None, max_minutes=10)
    assert plan.epochs is None and plan.total_steps is None and plan.budget_s == 600
    plan.start = time.time() - 300  # half the budget spent
    assert plan.fraction(step=10) == pytest.approx(0.5, abs=0.01)
    plan.start = time.time() - 600
    assert plan.fraction(step=10) == 1.0 and lr_factor(plan.fraction(10), plan.warmup) == pytest.approx(0.0, abs=1e-9)
    assert plan.out_of_time()


def test_with_epochs_and_budget_the_schedule_follows_whichever_ends_first():
    plan = plan_run(batches_per_pass=10, epochs=2, steps_per_epoch=None, max_minutes=60)
    # steps run out long before the hour: the step fraction leads, the LR reaches 0 at the last step
    assert plan.fraction(step=10) == pytest.approx(0.5, abs=0.01)
    assert lr_factor(plan.fraction(step=20), plan.warmup) == pytest.approx(0.0, abs=1e-9)
    # the clock runs out first: the time fraction leads
    slow = Plan(epochs=1000, steps_per_epoch=10, budget_s=60.0, warmup=0.05, start=time.time() - 45)
    assert slow.fraction(step=5) == pytest.approx(0.75, abs=0.01)
