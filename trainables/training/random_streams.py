"""Common random numbers: one random stream per (training seed, purpose).

Two runs that differ in one setting but share a seed should share every random draw their difference
does not need to change, so the difference of their scores measures the setting and not a reshuffle of
the dice. Each source of randomness therefore has its own seed, derived from the run's seed and its
purpose: the backbone's initial weights, each plugin's initial weights (keyed by the plugin's name, so
switching a plugin on or off leaves the backbone's and the other plugins' weights alone), and per epoch
the dropout masks, the data order, the backbone's sampled negatives and each plugin's samples (keyed by
name as well). The draws of one stream never move those of another.

Dropout is one stream for the whole model (torch's global generator): a plugin's dropout layers draw
from it in forward order, so switching on a plugin with dropout moves the backbone's later masks.
"""

from __future__ import annotations

import zlib

import numpy as np

#: stream numbers of an epoch's draws (their seeds are the values the training loop used before this module)
DROPOUT, NEGATIVES, DATA_ORDER = 0, 1, 2
INIT = "init"
BACKBONE = "backbone"


def stream_seed(seed: int, *purpose: int | str) -> int:
    """A 32-bit seed of the stream ``purpose`` (ints and names, e.g. ``(epoch, NEGATIVES, "ral")``) of
    training seed ``seed``; distinct purposes give independent streams (numpy's SeedSequence)."""
    words = [seed] + [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in purpose]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def init_seed(seed: int, component: str) -> int:
    """The seed of ``component``'s initial weights: ``BACKBONE`` or a plugin's name."""
    return stream_seed(seed, INIT, component)
