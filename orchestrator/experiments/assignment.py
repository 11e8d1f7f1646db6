"""Which side of an experiment a request lands on.

A request that names a user (OpenAI's `user` field) is placed by a hash of
the experiment's id and that user: the same user always lands on the same
variant, and different experiments split users independently. A request
without one is placed at random. A canary's share only grows from stage to
stage, so the users it holds at 5% are among those it holds at 10%.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

_SCALE = float(1 << 64)


def point_of(salt: str, user: str | None) -> float:
    """A point in [0, 1): fixed for (salt, user), random when user is None."""
    if user is None:
        return random.random()
    digest = hashlib.blake2b(f"{salt}\x00{user}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def pick(weights: Sequence[float], point: float) -> int:
    """The index whose share of the weights' total holds point (0 <= point < 1)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("the weights must add up to more than 0")
    edge = 0.0
    for index, weight in enumerate(weights):
        edge += weight / total
        if point < edge:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)  # point close to 1 under rounding
