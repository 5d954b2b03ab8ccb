"""What each parameter of ``Config`` accepts: a ``Rule`` (a sentence saying what is expected, and the
test), declared beside the field with ``param(default, rule)``."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a parameter accepts: ``holds(value)``, and ``expected`` for the message when it does not."""

    expected: str
    holds: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(at_least: int) -> Rule:
    return Rule(f"an integer >= {at_least}", lambda v: _is_int(v) and v >= at_least)


SEED_MAX = 2**32 - 1  # what every generator a run seeds takes (torch, NumPy's SeedSequence, faiss after masking)
SEED = Rule(f"an integer in [0, {SEED_MAX}]", lambda v: _is_int(v) and 0 <= v <= SEED_MAX)


def multiple_of(step: int, why: str) -> Rule:
    return Rule(f"a positive multiple of {step} ({why})", lambda v: _is_int(v) and v > 0 and v % step == 0)


def _bounds(above=None, at_least=None, at_most=None) -> tuple[str, Callable[[float], bool]]:
    parts = [f"> {above}" * (above is not None), f">= {at_least}" * (at_least is not None)]
    parts.append(f"<= {at_most}" * (at_most is not None))
    text = " and ".join(p for p in parts if p)
    return (
        text,
        lambda v: (
            (above is None or v > above) and (at_least is None or v >= at_least) and (at_most is None or v <= at_most)
        ),
    )


def number(above=None, at_least=None, at_most=None) -> Rule:
    text, within = _bounds(above, at_least, at_most)
    return Rule(f"a finite number {text}", lambda v: _is_number(v) and within(v))


def interval(above=None, at_least=None, at_most=None) -> Rule:
    text, within = _bounds(above, at_least, at_most)
    return Rule(
        f"[low, high], two numbers {text} with low <= high",
        lambda v: isinstance(v, tuple) and len(v) == 2 and all(_is_number(x) and within(x) for x in v) and v[0] <= v[1],
    )


def choice(*options: str) -> Rule:
    return Rule(f"one of {', '.join(options)}", lambda v: v in options)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.expected}", lambda v: v is None or rule.holds(v))


boolean = Rule("true or false", lambda v: isinstance(v, bool))
text = Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
PROBABILITY = Rule("a probability in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)
SEEDS = Rule(
    f"a non-empty list of distinct integers in [0, {SEED_MAX}], e.g. [0, 1, 2]",
    lambda v: isinstance(v, list) and bool(v) and all(SEED.holds(s) for s in v) and len(set(v)) == len(v),
)
SWITCH = Rule(
    "'min_loss', 'global_min' or a number of CE epochs >= 0",
    lambda v: v in ("min_loss", "global_min") or (_is_int(v) and v >= 0),
)
DEVICE = Rule(
    "auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None
)


def param(default: Any = dataclasses.MISSING, check: Rule | None = None, default_factory: Any = dataclasses.MISSING):
    """A Config field with the rule its values must meet (``Config.validate`` applies it)."""
    return field(default=default, default_factory=default_factory, metadata={"rule": check})
