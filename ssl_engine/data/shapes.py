"""Shapes: a procedurally generated, labelled colour image data set that needs nothing downloaded.

Every image shows one object from ten classes that differ by *shape*: house, tree, car, mushroom,
streetlight, rocket, person (stick figure), mug, sailboat and chair. Each object has a natural upright
orientation and most stand on a base at the bottom, so predicting a 0/90/180/270 degree rotation is a
meaningful pretext task, and the parts (roof, wheels, sail, ...) give jigsaw and contrastive tasks local
structure to learn.

Colour alone carries no class information: the background and the object's main body take random colours drawn from
the same distributions for every class (dark-on-light or light-on-dark with equal probability). Parts have usual
colours, as objects in photographs do, and the same ones in every class: the secondary part (roof, trunk, wheels,
stem, lamp head, nose and fins, head, band and saucer, sails, seat) is red to orange and the accents (door and
window, windows and hubs, spots, bulb, window and flame, steam, waves) cyan to blue, each light or dark at random.
Guessing a gray image's colours (colorization, split-brain) then takes recognising its parts, which is what those
tasks rely on in natural images. Per image the generator also varies the object's position, scale (45-85% of the
image height), a small tilt (at most 8 degrees), horizontal flip, per-class proportions, the background texture
(gradient, stripes, checkerboard, rings or smooth noise, blended), an optional ground band and mild pixel noise.

Images are rendered from signed distance functions with a one-pixel soft edge, which anti-aliases at any
size from 8 px up, and are fully vectorised with numpy. An image depends only on ``(split, index,
image_size)``: its generator is seeded from a cryptographic hash of ``(split, index)``, so the same inputs
give bit-identical pixels in every call and process, and the splits use disjoint seeds. The label of index
``i`` is ``i % 10``, so every run of ten consecutive indices holds each class once.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES: tuple[str, ...] = (
    "house",
    "tree",
    "car",
    "mushroom",
    "streetlight",
    "rocket",
    "person",
    "mug",
    "sailboat",
    "chair",
)
SPLIT_SIZES: dict[str, int] = {"train": 10000, "val": 2000, "test": 2000}
MIN_IMAGE_SIZE = 8

# A part: a signed distance field (negative inside, in object units) and the colour slot it is painted with.
_Part = tuple[np.ndarray, int]
_Painter = Callable[[np.ndarray, np.ndarray, np.random.Generator], list[_Part]]


# --- signed distance functions ------------------------------------------------------------------------------
# All take the object-frame coordinate grids x, y (float32, shape (S, S), y pointing up) and python scalars.


def _length(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.hypot is about 4x slower than this on float32, and the overflow safety it buys is not needed here.
    return np.sqrt(a * a + b * b)


def _box(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Axis-aligned rectangle [x0, x1] x [y0, y1]."""
    dx = np.abs(x - (x0 + x1) / 2) - (x1 - x0) / 2
    dy = np.abs(y - (y0 + y1) / 2) - (y1 - y0) / 2
    outside = _length(np.maximum(dx, 0), np.maximum(dy, 0))
    return outside + np.minimum(np.maximum(dx, dy), 0)


def _circle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return _length(x - cx, y - cy) - r


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    # Not an exact distance, but close enough near the boundary, which is all the soft edge needs.
    return (_length((x - cx) * (1 / a), (y - cy) * (1 / b)) - 1) * min(a, b)


def _capsule(x: np.ndarray, y: np.ndarray, ax: float, ay: float, bx: float, by: float, r: float) -> np.ndarray:
    """Line segment from (ax, ay) to (bx, by) with half-thickness r."""
    px, py = x - ax, y - ay
    ex, ey = bx - ax, by - ay
    h = np.clip((px * ex + py * ey) * (1 / (ex * ex + ey * ey)), 0, 1)
    return _length(px - ex * h, py - ey * h) - r


def _polygon(x: np.ndarray, y: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Convex polygon, points counter-clockwise: the max of its edges' half-plane distances.

    Exact inside and beside edges; past a corner it underestimates, which only rounds the soft edge a little.
    """
    d: np.ndarray | None = None
    for (ax, ay), (bx, by) in zip(points, list(points[1:]) + [points[0]], strict=True):
        length = math.hypot(bx - ax, by - ay)
        nx, ny = (by - ay) / length, (ax - bx) / length
        edge = x * nx + y * ny - (ax * nx + ay * ny)
        d = edge if d is None else np.maximum(d, edge)
    assert d is not None
    return d


def _trapezoid(
    x: np.ndarray, y: np.ndarray, cx: float, y0: float, y1: float, half_bottom: float, half_top: float
) -> np.ndarray:
    """Symmetric trapezoid around x = cx from y0 (half-width half_bottom) up to y1 (half-width half_top)."""
    return _polygon(x, y, [(cx - half_bottom, y0), (cx + half_bottom, y0), (cx + half_top, y1), (cx - half_top, y1)])


def _union(*fields: np.ndarray) -> np.ndarray:
    return functools.reduce(np.minimum, fields)


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(a, b)


# --- the ten classes ----------------------------------------------------------------------------------------
# Objects live in [-1, 1]^2 with y up and their base at y = -1. Colour slots: 0 main, 1 secondary, 2 accent.


def _house(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    hw = rng.uniform(0.5, 0.72)
    top = rng.uniform(-0.15, 0.15)
    overhang = rng.uniform(0.05, 0.15)
    door_x = rng.uniform(-0.35, 0.35) * hw
    door_w = rng.uniform(0.12, 0.18)
    door_h = rng.uniform(0.45, 0.6) * (top + 1)
    win_x = -math.copysign(hw * 0.55, door_x if door_x else 1.0)
    win_s = rng.uniform(0.1, 0.14)
    win_y = (top - 1) / 2 + 0.15
    chimney_x = rng.uniform(0.25, 0.45) * math.copysign(1.0, -win_x)
    roof = _polygon(x, y, [(-hw - overhang, top), (hw + overhang, top), (0.0, 1.0)])
    chimney = _box(x, y, chimney_x - 0.07, chimney_x + 0.07, top + 0.2, 0.85)
    return [
        (_union(_box(x, y, -hw, hw, -1.0, top), chimney), 0),
        (roof, 1),
        (
            _union(
                _box(x, y, door_x - door_w, door_x + door_w, -1.0, -1.0 + door_h),
                _box(x, y, win_x - win_s, win_x + win_s, win_y - win_s, win_y + win_s),
            ),
            2,
        ),
    ]


def _tree(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    trunk_w = rng.uniform(0.07, 0.13)
    trunk_top = rng.uniform(-0.2, 0.05)
    r = rng.uniform(0.42, 0.55)
    cy = 0.98 - r
    side_r = r * rng.uniform(0.6, 0.75)
    side_dx = r * rng.uniform(0.7, 0.9)
    side_y = cy - r * 0.45
    canopy = _union(
        _circle(x, y, 0.0, cy, r),
        _circle(x, y, -side_dx, side_y, side_r),
        _circle(x, y, side_dx, side_y + rng.uniform(-0.1, 0.1), side_r),
    )
    trunk = _trapezoid(x, y, 0.0, -1.0, trunk_top, trunk_w * 1.4, trunk_w)
    branch = _capsule(x, y, 0.0, trunk_top - 0.25, trunk_w + 0.2, trunk_top - 0.05, trunk_w * 0.35)
    return [(_union(trunk, branch), 1), (canopy, 0)]


def _car(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    length = rng.uniform(0.85, 1.0)
    body_top = rng.uniform(-0.15, 0.0)
    wheel_r = rng.uniform(0.22, 0.28)
    wheel_y = -1.0 + wheel_r
    cab_back = -length * rng.uniform(0.55, 0.7)
    cab_front = length * rng.uniform(0.25, 0.45)
    cab_top = body_top + rng.uniform(0.45, 0.6)
    slant = 0.2
    body = _box(x, y, -length, length, wheel_y - 0.05, body_top)
    cabin = _polygon(
        x,
        y,
        [
            (cab_back, body_top),
            (cab_front + slant, body_top),
            (cab_front, cab_top),
            (cab_back + 0.1, cab_top),
        ],
    )
    win_inset = 0.08
    mid = (cab_back + cab_front) / 2
    windows = _intersect(
        _polygon(
            x,
            y,
            [
                (cab_back + win_inset, body_top + 0.05),
                (cab_front + slant - win_inset * 1.6, body_top + 0.05),
                (cab_front - win_inset * 0.4, cab_top - win_inset),
                (cab_back + 0.1 + win_inset * 0.6, cab_top - win_inset),
            ],
        ),
        0.04 - np.abs(x - mid),
    )
    wheels = _union(_circle(x, y, -length * 0.6, wheel_y, wheel_r), _circle(x, y, length * 0.6, wheel_y, wheel_r))
    hubs = _union(
        _circle(x, y, -length * 0.6, wheel_y, wheel_r * 0.4),
        _circle(x, y, length * 0.6, wheel_y, wheel_r * 0.4),
    )
    headlight = _circle(x, y, length - 0.04, body_top - 0.12, 0.07)
    return [(_union(body, cabin), 0), (_union(windows, headlight), 2), (wheels, 1), (hubs, 2)]


def _mushroom(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    stem_w = rng.uniform(0.15, 0.24)
    cap_y = rng.uniform(-0.15, 0.1)
    cap_a = rng.uniform(0.75, 0.95)
    cap_b = min(rng.uniform(0.65, 0.85), 0.98 - cap_y)
    stem = _trapezoid(x, y, 0.0, -1.0, cap_y + 0.05, stem_w * 1.3, stem_w)
    cap = _intersect(_ellipse(x, y, 0.0, cap_y, cap_a, cap_b), cap_y - y)
    spots = _intersect(
        _union(
            _circle(x, y, -0.4 * cap_a, cap_y + 0.3 * cap_b, 0.13),
            _circle(x, y, 0.1 * cap_a, cap_y + 0.65 * cap_b, 0.11),
            _circle(x, y, 0.5 * cap_a, cap_y + 0.25 * cap_b, 0.1),
        ),
        cap + 0.03,
    )
    return [(stem, 1), (cap, 0), (spots, 2)]


def _streetlight(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    pole_x = rng.uniform(-0.55, -0.35)
    pole_w = rng.uniform(0.05, 0.07)
    arm_y = rng.uniform(0.75, 0.9)
    head_x = rng.uniform(0.25, 0.45)
    head_h = rng.uniform(0.24, 0.32)
    base = _trapezoid(x, y, pole_x, -1.0, -0.8, 0.18, 0.1)
    pole = _box(x, y, pole_x - pole_w, pole_x + pole_w, -1.0, arm_y)
    arm = _capsule(x, y, pole_x, arm_y, head_x, arm_y, pole_w * 0.8)
    brace = _capsule(x, y, pole_x, arm_y - 0.3, pole_x + 0.3, arm_y, pole_w * 0.5)
    head = _trapezoid(x, y, head_x, arm_y - head_h, arm_y + 0.03, 0.32, 0.1)
    bulb = _intersect(_circle(x, y, head_x, arm_y - head_h, 0.18), arm_y - head_h - y)
    return [(_union(base, pole, arm, brace), 0), (head, 1), (bulb, 2)]


def _rocket(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    hw = rng.uniform(0.18, 0.26)
    body_bottom = rng.uniform(-0.6, -0.5)
    body_top = rng.uniform(0.25, 0.4)
    fin_out = hw + rng.uniform(0.2, 0.3)
    body = _box(x, y, -hw, hw, body_bottom, body_top)
    nose = _polygon(x, y, [(-hw, body_top), (hw, body_top), (0.0, 0.98)])
    fins = _union(
        _polygon(x, y, [(-fin_out, body_bottom - 0.15), (-hw, body_bottom), (-hw, body_bottom + 0.45)]),
        _polygon(x, y, [(hw, body_bottom), (fin_out, body_bottom - 0.15), (hw, body_bottom + 0.45)]),
    )
    window = _circle(x, y, 0.0, (body_top + body_bottom) / 2 + 0.12, hw * 0.5)
    flame = _polygon(x, y, [(-hw * 0.7, body_bottom), (0.0, -1.0), (hw * 0.7, body_bottom)])
    return [(body, 0), (_union(nose, fins), 1), (_union(window, flame), 2)]


def _person(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    t = rng.uniform(0.06, 0.09)
    head_r = rng.uniform(0.17, 0.22)
    head_y = 0.98 - head_r
    neck = head_y - head_r
    hip = rng.uniform(-0.25, -0.1)
    shoulder = neck - 0.12
    stride = rng.uniform(0.2, 0.45)
    arm_l = (rng.uniform(-0.65, -0.4), shoulder + rng.uniform(-0.55, 0.2))
    arm_r = (rng.uniform(0.4, 0.65), shoulder + rng.uniform(-0.55, 0.2))
    limbs = _union(
        _capsule(x, y, 0.0, neck, 0.0, hip, t * 1.3),
        _capsule(x, y, 0.0, shoulder, arm_l[0], arm_l[1], t),
        _capsule(x, y, 0.0, shoulder, arm_r[0], arm_r[1], t),
        _capsule(x, y, 0.0, hip, -stride, -1.0 + t, t),
        _capsule(x, y, 0.0, hip, stride, -1.0 + t, t),
    )
    return [(limbs, 0), (_circle(x, y, 0.0, head_y, head_r), 1)]


def _mug(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    cx = rng.uniform(-0.25, -0.15)
    hw = rng.uniform(0.4, 0.5)
    top = rng.uniform(0.1, 0.3)
    handle_r = rng.uniform(0.22, 0.3)
    handle_y = (top - 0.9) / 2
    handle = _intersect(np.abs(_circle(x, y, cx + hw, handle_y, handle_r)) - 0.07, (cx + hw - 0.05) - x)
    body = _box(x, y, cx - hw, cx + hw, -0.9, top)
    band = _intersect(body, np.abs(y - (top - 0.9) / 2) - rng.uniform(0.08, 0.15))
    saucer = _polygon(
        x, y, [(cx - hw - 0.25, -0.9), (cx - hw - 0.15, -1.0), (cx + hw + 0.15, -1.0), (cx + hw + 0.25, -0.9)]
    )
    phase = rng.uniform(0, 2 * math.pi)
    steam = _union(
        *(
            _intersect(np.abs(x - sx - 0.06 * np.sin(y * 14 + phase)) - 0.035, np.abs(y - (top + 0.45)) - 0.3)
            for sx in (cx - hw * 0.4, cx + hw * 0.4)
        )
    )
    return [(_union(handle, body), 0), (_union(band, saucer), 1), (steam, 2)]


def _sailboat(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    deck = rng.uniform(-0.5, -0.4)
    keel = deck - rng.uniform(0.25, 0.35)
    hull_w = rng.uniform(0.8, 0.95)
    mast_x = rng.uniform(-0.1, 0.1)
    mast_top = rng.uniform(0.85, 0.98)
    hull = _polygon(x, y, [(-hull_w * 0.7, keel), (hull_w * 0.75, keel), (hull_w, deck), (-hull_w, deck)])
    mast = _box(x, y, mast_x - 0.03, mast_x + 0.03, deck, mast_top)
    sail_bottom = deck + 0.1
    main_sail = _polygon(
        x,
        y,
        [
            (mast_x + 0.06, sail_bottom),
            (mast_x + rng.uniform(0.55, 0.75), sail_bottom),
            (mast_x + 0.06, mast_top - 0.05),
        ],
    )
    jib = _polygon(
        x,
        y,
        [
            (mast_x - rng.uniform(0.45, 0.6), sail_bottom),
            (mast_x - 0.06, sail_bottom),
            (mast_x - 0.06, mast_top * 0.75),
        ],
    )
    phase = rng.uniform(0, 2 * math.pi)
    surface = y - (keel + 0.1 + 0.05 * np.sin(x * 9 + phase))
    waves = _intersect(_intersect(surface, np.abs(x) - 1.0), -1.0 - y)
    return [(_union(hull, mast), 0), (_union(main_sail, jib), 1), (waves, 2)]


def _chair(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[_Part]:
    hw = rng.uniform(0.4, 0.55)
    seat_y = rng.uniform(-0.15, 0.05)
    t = rng.uniform(0.05, 0.07)
    back_top = rng.uniform(0.85, 0.98)
    lean = rng.uniform(0.0, 0.12)  # the back tilts backwards, away from the seat
    frame = _union(
        _box(x, y, -hw, -hw + 2 * t, -1.0, seat_y),
        _box(x, y, hw - 2 * t, hw, -1.0, seat_y),
        _box(x, y, -hw, hw, -0.65, -0.65 + t),
        _polygon(
            x,
            y,
            [(-hw, seat_y), (-hw + 2 * t, seat_y), (-hw + 2 * t - lean, back_top), (-hw - lean, back_top)],
        ),
    )
    cushion_bottom = seat_y + rng.uniform(0.3, 0.45)
    cushion = _polygon(
        x,
        y,
        [
            (-hw - lean * 0.4, cushion_bottom),
            (-hw + 0.2 - lean * 0.4, cushion_bottom),
            (-hw + 0.2 - lean * 0.95, back_top - 0.05),
            (-hw - lean * 0.95, back_top - 0.05),
        ],
    )
    seat = _box(x, y, -hw - 0.05, hw + 0.05, seat_y, seat_y + 2.5 * t)
    return [(frame, 0), (_union(seat, cushion), 1)]


_PAINTERS: tuple[_Painter, ...] = (
    _house,
    _tree,
    _car,
    _mushroom,
    _streetlight,
    _rocket,
    _person,
    _mug,
    _sailboat,
    _chair,
)
assert len(_PAINTERS) == len(CLASS_NAMES)


# --- colours and backgrounds --------------------------------------------------------------------------------


_Colour = tuple[float, float, float]


# Hue bands (HSV hue, in turns) of the parts that have a usual colour, whatever the class; see render_image.
WARM_HUES = (-0.03, 0.09)  # red to orange: secondary parts (roof, trunk, wheels, stem, sails, ...)
COOL_HUES = (0.5, 0.64)  # cyan to blue: accents (windows, spots, bulb, flame, waves, ...)


def _random_colour(
    rng: np.random.Generator, light: bool | None = None, hues: tuple[float, float] | None = None
) -> _Colour:
    """An RGB colour in [0, 1]: light (HSV value 0.6-1), dark (0.05-0.45), or either at even odds if None.

    Any hue at saturation 0-0.9, or with ``hues`` a hue in that band at saturation 0.5-0.9 (a clear colour).
    """
    if light is None:
        light = rng.random() < 0.5
    value = rng.uniform(0.6, 1.0) if light else rng.uniform(0.05, 0.45)
    if hues is None:
        return colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.9), value)
    return colorsys.hsv_to_rgb(rng.uniform(*hues) % 1.0, rng.uniform(0.5, 0.9), value)


def _contrasting_colour(
    rng: np.random.Generator,
    avoid: Sequence[_Colour],
    min_distance: float,
    light: bool | None = None,
    hues: tuple[float, float] | None = None,
) -> _Colour:
    """A random colour at least ``min_distance`` (RGB distance) from all of ``avoid``, else the best of 16."""
    best, best_gap = (0.0, 0.0, 0.0), -1.0
    for _ in range(16):
        colour = _random_colour(rng, light, hues)
        gap = min(math.dist(colour, other) for other in avoid)
        if gap >= min_distance:
            return colour
        if gap > best_gap:
            best, best_gap = colour, gap
    return best


def _as_pixel(colour: _Colour) -> np.ndarray:
    """A colour shaped (3, 1, 1) to broadcast against (3, S, S) images."""
    return np.array(colour, dtype=np.float32).reshape(3, 1, 1)


@functools.lru_cache(maxsize=32)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] with v pointing up: (u, v), each float32 of shape (S, S)."""
    centres = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    u, v = np.meshgrid(centres, -centres)
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


@functools.lru_cache(maxsize=64)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """Smooth (cosine) interpolation weights from ``cells`` lattice points to ``size`` pixels: (S, cells)."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    frac = (1 - np.cos(frac * math.pi)) / 2
    weights = np.zeros((size, cells), dtype=np.float32)
    weights[np.arange(size), lo] = 1 - frac
    weights[np.arange(size), lo + 1] += frac
    weights.setflags(write=False)
    return weights


def _pattern(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A random background texture in [0, 1], float32 of shape (S, S)."""
    kind = int(rng.integers(5))
    angle = rng.uniform(0, 2 * math.pi)
    along = u * math.cos(angle) + v * math.sin(angle)
    if kind == 0:  # linear gradient
        return np.clip(0.5 + rng.uniform(0.3, 0.6) * along, 0, 1)
    if kind == 1:  # stripes, from smooth waves to nearly square ones
        wave = np.sin(along * rng.uniform(4, 18) + rng.uniform(0, 2 * math.pi))
        return np.clip(0.5 + rng.uniform(0.5, 3.0) * wave, 0, 1)
    if kind == 2:  # checkerboard at a random angle
        across = v * math.cos(angle) - u * math.sin(angle)
        freq = rng.uniform(4, 14)
        wave = np.sin(along * freq) * np.sin(across * freq)
        return np.clip(0.5 + rng.uniform(0.5, 3.0) * wave, 0, 1)
    if kind == 3:  # concentric rings around a random centre
        radius = _length(u - rng.uniform(-1, 1), v - rng.uniform(-1, 1))
        return 0.5 + 0.5 * np.sin(radius * rng.uniform(5, 16) + rng.uniform(0, 2 * math.pi))
    cells = int(rng.integers(3, 7))  # smooth value noise
    weights = _upsampler(u.shape[0], cells)
    noise = weights @ rng.random((cells, cells), dtype=np.float32) @ weights.T
    return np.clip((noise - 0.5) * 2.0 + 0.5, 0, 1)


def _paint(image: np.ndarray, sdf: np.ndarray, colour: np.ndarray, inv_pixel: float) -> None:
    """Composite ``colour`` (3, 1, 1) over ``image`` (3, S, S) in place where ``sdf`` < 0 (soft 1 px edge)."""
    alpha = np.clip(0.5 - sdf * inv_pixel, 0, 1)
    image += alpha * (colour - image)


# --- rendering ----------------------------------------------------------------------------------------------

_SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def _check_split(split: str) -> None:
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(map(repr, SPLIT_SIZES))}")


def _check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")


def _generator(split: str, index: int) -> np.random.Generator:
    # hashlib rather than hash(): str hashes are salted per process, which would break reproducibility.
    digest = hashlib.blake2b(f"sslx-shapes:{_SPLIT_CODES[split]}:{index}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def label_of(index: int) -> int:
    """The class of image ``index`` in any split: classes cycle, so ten consecutive indices hold each once."""
    return index % len(CLASS_NAMES)


def render_image(split: str, index: int, image_size: int) -> tuple[torch.Tensor, int]:
    """Render image ``index`` of ``split``.

    Args:
        split: "train", "val" or "test".
        index: any non-negative integer (indices beyond the split's nominal size are valid too).
        image_size: side S of the square image, at least 8.

    Returns:
        The image as a uint8 tensor of shape (3, S, S) and its label in [0, 10).

    Raises:
        ValueError: for an unknown split, a negative index or an image size below 8.
    """
    _check_split(split)
    _check_image_size(image_size)
    # Normalise numpy and tensor integers, whose str() would otherwise change the seed.
    index = operator.index(index)
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    label = label_of(index)
    rng = _generator(split, index)
    u, v = _pixel_grid(image_size)

    # Dark objects on light backgrounds and the reverse, equally often: brightness says nothing of the class.
    light_background = bool(rng.random() < 0.5)
    background = (_random_colour(rng, light_background), _random_colour(rng, light_background))
    main = _contrasting_colour(rng, background, 0.45, light=not light_background)
    # Parts have usual colours, as objects in photographs do: the same bands in every class, so colour alone
    # still says nothing of the class, but a gray image's colours can be guessed by recognising its parts.
    secondary = _contrasting_colour(rng, (main, *background), 0.35, hues=WARM_HUES)
    accent = _contrasting_colour(rng, (main, secondary), 0.35, hues=COOL_HUES)
    slots = (_as_pixel(main), _as_pixel(secondary), _as_pixel(accent))

    texture = _pattern(rng, u, v)
    if rng.random() < 0.5:
        weight = rng.uniform(0.3, 0.7)
        texture = texture * weight + _pattern(rng, u, v) * (1 - weight)
    image = _as_pixel(background[0]) + texture * (_as_pixel(background[1]) - _as_pixel(background[0]))

    scale = rng.uniform(0.45, 0.85)  # half-extent of the object over half the image side
    tilt = math.radians(rng.uniform(-8.0, 8.0))
    slack = 1.0 - scale
    cx = rng.uniform(-1.0, 1.0) * slack * 0.9
    cy = rng.uniform(-1.0, 1.0) * slack * 0.9
    cos_t, sin_t = math.cos(tilt) / scale, math.sin(tilt) / scale
    du, dv = u - cx, v - cy
    x = du * cos_t + dv * sin_t
    y = dv * cos_t - du * sin_t
    if rng.random() < 0.5:
        x = -x
    inv_pixel = scale * image_size / 2.0  # object units -> pixels

    if rng.random() < 0.6:
        ground = _contrasting_colour(rng, (main, *background), 0.3)
        _paint(image, y + (0.97 + rng.uniform(0.0, 0.05)), _as_pixel(ground), inv_pixel)
    for sdf, slot in _PAINTERS[label](x, y, rng):
        _paint(image, sdf, slots[slot], inv_pixel)

    # Brightness-only uniform noise: a third of the cost of per-channel Gaussian noise, and looks the same.
    noise_level = rng.uniform(0.0, 0.1)
    if noise_level > 0.01:
        image += (rng.random(u.shape, dtype=np.float32) - 0.5) * noise_level
    pixels = np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return torch.from_numpy(pixels), label


MEMO_MAX_SIZE = 96  # images kept once rendered up to this side (the small-set regime: 10,000 at 96 px are 276 MB)


class RenderedImages:
    """The images of one split and size rendered so far, kept for the process: a second pass over the split (the
    closing probe extracts features for the trained and the random-init backbone in turn) renders nothing again.

    ``images`` ``(N, 3, S, S)`` uint8 and ``labels`` ``(N,)`` int64 are allocated on the first access; ``done``
    says which rows hold an image.
    """

    def __init__(self, split: str, image_size: int) -> None:
        count = SPLIT_SIZES[split]
        self.split, self.image_size = split, image_size
        self.images = torch.empty(count, 3, image_size, image_size, dtype=torch.uint8)
        self.labels = torch.empty(count, dtype=torch.int64)
        self.done = torch.zeros(count, dtype=torch.bool)

    def get(self, index: int) -> tuple[torch.Tensor, int]:
        if not self.done[index]:
            image, label = render_image(self.split, index, self.image_size)
            self.images[index], self.labels[index], self.done[index] = image, label, True
        return self.images[index].clone(), int(self.labels[index])


@functools.cache
def rendered_images(split: str, image_size: int) -> RenderedImages:
    """The process's :class:`RenderedImages` of ``split`` at ``image_size`` (at most :data:`MEMO_MAX_SIZE`)."""
    return RenderedImages(split, image_size)


class ShapesDataset(Dataset[tuple[torch.Tensor, int]]):
    """The shapes data set: deterministic procedurally rendered images, rendered on access (and, up to
    :data:`MEMO_MAX_SIZE` px, kept for the process once rendered: :class:`RenderedImages`).

    Args:
        split: "train", "val" or "test".
        image_size: side S of the square images, at least 8.
        size: number of images, overriding the split's nominal size; image ``i`` is the same at any size.

    Raises:
        ValueError: for an unknown split, an image size below 8 or a negative size.
    """

    def __init__(self, split: str, image_size: int, size: int | None = None) -> None:
        _check_split(split)
        _check_image_size(image_size)
        if size is not None and size < 0:
            raise ValueError(f"size must be non-negative, got {size}")
        self.split = split
        self.image_size = image_size
        self.size = SPLIT_SIZES[split] if size is None else size
        self.classes: list[str] = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Image ``index``: a uint8 tensor of shape (3, S, S) and its label."""
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        if self.image_size <= MEMO_MAX_SIZE and index < SPLIT_SIZES[self.split]:
            return rendered_images(self.split, self.image_size).get(index)
        return render_image(self.split, index, self.image_size)
