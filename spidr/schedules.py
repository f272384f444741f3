"""Step schedules as pure functions: tri-stage learning rate, SpidR's exponential and DinoSR's linear teacher EMA.

`step` is the number of optimizer updates already taken (0 for the first update).
"""

from __future__ import annotations

import math


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
        return exponential_ema(step, start_decay=e.start_decay, timescale=cfg.ema_timescale, threshold=e.threshold)
    if e.schedule == "linear":
        return linear_ema(
            step, start_decay=e.start_decay, final_decay=e.final_decay, final_step=cfg.ema_final_step,
            freeze_step=cfg.freeze_at,
        )
    raise ValueError(f"unknown ema.schedule {e.schedule!r}; expected 'exponential' or 'linear'")
