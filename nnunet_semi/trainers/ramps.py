"""Weight schedules for unsupervised loss terms, by training iteration."""
import math


def sigmoid_rampup(iteration: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(iteration / length, 0, 1) (Laine & Aila 2017; Tarvainen & Valpola 2017).

    CAML calls the same curve its "Gaussian warm-up". 0 -> exp(-5) ~ 0.0067, length/2 -> exp(-1.25) ~ 0.287,
    length and beyond -> 1. A length <= 0 means no ramp (always 1)."""
    if length <= 0:
        return 1.0
    t = min(max(iteration, 0.0), length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


def stepped_sigmoid_rampup(iteration: int, length_in_steps: int, step: int) -> float:
    """The ramp as the authors' code runs it: the clock is floor(iteration / step), e.g. CAML's step of 150
    iterations with a length of 40 steps reaches full weight at iteration 6000."""
    return sigmoid_rampup(iteration // step, length_in_steps)


def linear_rampup(iteration: float, length: float) -> float:
    """t = clip(iteration / length, 0, 1); a length <= 0 means no ramp (always 1)."""
    if length <= 0:
        return 1.0
    return min(max(iteration, 0.0), length) / length
