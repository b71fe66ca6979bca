"""The jigsaw permutation set: permutations of the 9 tiles chosen far apart in Hamming distance.

Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles" (ECCV),
Sec. 3.3 and Algorithm 1: the network classifies which of ``P`` permutations shuffled the tiles, and the set
is chosen greedily from all ``9! = 362880`` permutations so its members are far apart, which the paper found
makes the task harder and the features better (their Table 3).

The paper's Algorithm 1 adds the permutation with the largest *summed* (i.e. average) Hamming distance to the
chosen ones; that keeps the average high (8.08 for 100) but lets the minimum drop to 2. Here each step adds
the permutation whose *minimum* distance to the chosen ones is largest (max-min greedy), ties broken by the
largest summed distance (the paper's criterion) and then by a seeded random order, so the average is the same
and the minimum much higher. Measured with the default seed:

========== ================ =================
 size       min Hamming      mean Hamming
========== ================ =================
 10          8                8.80
 30          7                8.26
 100         6                8.08
 1000        5                8.01
========== ================ =================

(a random set of 100 or 1000 has minimum distance 2, as has the paper's sum-greedy set). The greedy choice
depends only on the earlier ones, so a smaller set is a prefix of a larger one with the same seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TILES = 9
PERMUTATION_SEED = 0

# Sum of distances to up to 999 chosen permutations is at most 9 * 999 < 2**14: the minimum distance can be
# packed above it in one int32 score, so a single argmax implements the lexicographic (min, sum) order.
_MIN_WEIGHT = 1 << 14


def all_permutations(n: int = TILES) -> np.ndarray:
    """Every permutation of ``range(n)`` in lexicographic order, built with numpy (no per-permutation loop).

    Args:
        n: number of elements (at most 255, as the result is uint8; ``n!`` rows must fit in memory).

    Returns:
        ``(n!, n)`` uint8.
    """
    perms = np.zeros((1, 0), dtype=np.uint8)
    for k in range(1, n + 1):
        # Permutations of k elements: each first element, followed by the permutations of the other k-1
        # (the (k-1)-permutations with values >= first shifted up by one to skip it).
        firsts = [np.full((len(perms), 1), first, np.uint8) for first in range(k)]
        blocks = [np.concatenate([firsts[first], perms + (perms >= first)], axis=1) for first in range(k)]
        perms = np.concatenate(blocks)
    return perms


def hamming_distances(permutations: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (positions where two permutations differ): ``(P, n)`` -> ``(P, P)``."""
    return (permutations[:, None, :] != permutations[None, :, :]).sum(axis=-1)


@lru_cache(maxsize=8)
def permutation_set(size: int, seed: int = PERMUTATION_SEED) -> np.ndarray:
    """The maximal-Hamming-distance permutation set of the 9 jigsaw tiles (max-min greedy, see the module).

    Deterministic for a given ``(size, seed)`` and cached in-process; 100 take about 0.2 s, 1000 about 1 s.

    Args:
        size: number of permutations ``P``, 2 to 1000.
        seed: orders the candidates, which picks the first permutation and breaks ties.

    Returns:
        ``(P, 9)`` uint8, read-only; row ``k`` is permutation ``k`` (the class index the network predicts).
    """
    if not 2 <= size <= 1000:
        raise ValueError(f"permutation set size must be in [2, 1000], got {size}")
    every = all_permutations(TILES)  # (9!, 9)
    candidates = every[np.random.default_rng(seed).permutation(len(every))]  # seeded order: the tie-break
    by_position = np.ascontiguousarray(candidates.T)  # (9, 9!): one contiguous row per tile position
    min_distance = np.full(len(candidates), TILES + 1, dtype=np.uint8)  # to the chosen set, per candidate
    sum_distance = np.zeros(len(candidates), dtype=np.int32)
    chosen = [0]  # the first candidate of the seeded order, as the paper starts from a random permutation
    for _ in range(size - 1):
        newest = candidates[chosen[-1]]
        distance = np.zeros(len(candidates), dtype=np.uint8)
        for position in range(TILES):
            distance += by_position[position] != newest[position]
        np.minimum(min_distance, distance, out=min_distance)
        sum_distance += distance
        score = min_distance.astype(np.int32) * _MIN_WEIGHT + sum_distance
        score[chosen] = -1  # already chosen (their min distance is 0 anyway; this makes it explicit)
        chosen.append(int(score.argmax()))  # argmax takes the first maximum: seeded tie-break
    result = candidates[chosen]
    result.flags.writeable = False  # shared through the cache
    return result
