"""Step schedules as pure functions: tri-stage learning rate, SpidR's exponential and DinoSR's linear teacher EMA.

`step` is the number of optimizer updates already taken (0 for the first update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def tri_stage_lr(
    step: int, *, peak: float, warmup: int, hold: int, decay: int, init_scale: float = 0.01, final_scale: float = 0.01
) -> float:
    """fairseq `tri_stage`: linear warmup from init_scale * peak, hold at peak, exp. decay to final_scale * peak.

    After warmup + hold + decay steps the rate stays at final_scale * peak.
    """
    if step < warmup:
        return peak * (init_scale + (1.0 - init_scale) * step / warmup)
    step -= warmup
    if step < hold:
        return peak
    step -= hold
    if step < decay:
        return peak * math.exp(math.log(final_scale) * step / decay)
    return peak * final_scale


def exponential_ema(
    step: int, *, start_decay: float = 0.999, timescale: float = 20_000, threshold: float = 1e-7
) -> float:
    """SpidR: 1 - (1 - start) * exp(-step / timescale); exactly 1 (teacher frozen) once 1 - decay <= threshold."""
    decay = 1.0 - (1.0 - start_decay) * math.exp(-step / timescale)
    return decay if 1.0 - decay > threshold else 1.0


def linear_ema(
    step: int, *, start_decay: float = 0.999, final_decay: float = 0.9999, final_step: int = 30_000,
    freeze_step: int = 200_000,
) -> float:
    """DinoSR: linear from start to final decay over final_step steps, constant until freeze_step, then 1 (frozen)."""
    if step < final_step:
        return final_decay - (final_decay - start_decay) * (1.0 - step / final_step)
    if step < freeze_step:
        return final_decay
    return 1.0


def lr_at(step: int, cfg) -> float:
    """The learning rate of a TrainConfig at `step`."""
    o = cfg.optim
    return tri_stage_lr(
        step, peak=o.lr, warmup=cfg.warmup_steps, hold=cfg.hold_steps, decay=cfg.decay_steps,
        init_scale=o.init_lr_scale, final_scale=o.final_lr_scale,
    )


def ema_decay_at(step: int, cfg) -> float:
    """The teacher EMA decay of a TrainConfig at `step` (its `ema.schedule` picks the function)."""
    e = cfg.ema
    if e.schedule == "exponential":
        return exponential_ema(step, start_decay=cfg.ema_start_decay, timescale=cfg.ema_timescale,
                               threshold=e.threshold)
    if e.schedule == "linear":
        return linear_ema(
            step, start_decay=cfg.ema_start_decay, final_decay=e.final_decay, final_step=cfg.ema_final_step,
            freeze_step=cfg.freeze_at,
        )
    raise ValueError(f"unknown ema.schedule {e.schedule!r}; expected 'exponential' or 'linear'")


# ---------------------------------------------------------------------------------------------------------------
# The paper's recipe scaled to a step budget

PAPER_STEPS = 400_000
# fairseq tri_stage phase ratios and the CNN freeze step, as fractions of max_steps (12k / 188k / 200k, 200k).
PAPER_PHASES = {"warmup": 0.03, "hold": 0.47, "decay": 0.50, "freeze": 0.50}
PAPER_EMA_START_DECAY = 0.999
PAPER_EMA_TIMESCALE = 20_000.0
PAPER_EMA_THRESHOLD = 1e-7


def ema_movement(steps: int, *, start_decay: float, timescale: float, threshold: float = PAPER_EMA_THRESHOLD) -> float:
    """The teacher's total movement sum_{t=1..steps} (1 - decay(t)) under `exponential_ema`, in closed form.

    The trainer applies decay(t) after its t-th update, so a run of N steps sums t = 1..N; terms at or below the
    threshold are 0 (the teacher is frozen from there on).
    """
    a = 1.0 - start_decay
    if a <= threshold or steps < 1:
        return 0.0
    # The last step whose decay is still below 1: a * exp(-t / timescale) > threshold.
    last = math.floor(timescale * math.log(a / threshold))
    while last > 0 and a * math.exp(-last / timescale) <= threshold:
        last -= 1
    while a * math.exp(-(last + 1) / timescale) > threshold:
        last += 1
    n = min(steps, last)
    r = math.exp(-1.0 / timescale)
    return a * r * -math.expm1(-n / timescale) / -math.expm1(-1.0 / timescale)


def scaled_ema(max_steps: int) -> tuple[float, float]:
    """(start decay, timescale) of SpidR's exponential EMA for a run of `max_steps` updates; the paper's at 400k.

    The teacher's total movement, sum (1 - decay) ~ (1 - start) x timescale, is what the EMA buys: about 20 in the
    paper. Holding it means choosing how the starting averaging window 1 / (1 - start) (1000 updates in the paper)
    shrinks with the run. Kept as it is, a 10k-step teacher stays nearly fixed (timescale 20k: 8 of the 20 by the
    end); shrunk in proportion (window 25, timescale 500), the teacher moves as fast as the student, which is what
    collapses online clustering. The geometric mean of the two, both scaled by sqrt(max_steps / 400k), keeps
    (1 - start) x timescale at the paper's 20 and lets the run cover 20 x sqrt(max_steps / 400k) timescales:
    at 10k steps, start 0.99368 and timescale 3162, 96% of the paper's movement.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps}: expected at least 1")
    s = math.sqrt(max_steps / PAPER_STEPS)
    return 1.0 - (1.0 - PAPER_EMA_START_DECAY) / s, PAPER_EMA_TIMESCALE * s


@dataclass(frozen=True)
class ScaledRecipe:
    """The paper's schedules for a run of `max_steps` updates (`scaled_recipe`), as the trainer records them."""

    max_steps: int
    warmup_steps: int
    hold_steps: int
    decay_steps: int
    freeze_step: int
    ema_start_decay: float
    ema_timescale: float
    ema_threshold: float
    ema_movement: float  # sum (1 - decay) over this run
    paper_ema_movement: float  # the same over the paper's 400k steps (about 20)


def scaled_recipe(max_steps: int, threshold: float = PAPER_EMA_THRESHOLD) -> ScaledRecipe:
    """Warmup, hold, decay and freeze steps as the paper's fractions of `max_steps`; the EMA from `scaled_ema`.

    At 400k steps this is exactly the paper's recipe (12k / 188k / 200k, freeze 200k, start 0.999, timescale 20k).
    """
    start, timescale = scaled_ema(max_steps)
    phases = {name: round(ratio * max_steps) for name, ratio in PAPER_PHASES.items()}
    return ScaledRecipe(
        max_steps=max_steps, warmup_steps=phases["warmup"], hold_steps=phases["hold"], decay_steps=phases["decay"],
        freeze_step=phases["freeze"], ema_start_decay=start, ema_timescale=timescale, ema_threshold=threshold,
        ema_movement=ema_movement(max_steps, start_decay=start, timescale=timescale, threshold=threshold),
        paper_ema_movement=ema_movement(PAPER_STEPS, start_decay=PAPER_EMA_START_DECAY,
                                        timescale=PAPER_EMA_TIMESCALE, threshold=threshold),
    )
