"""The view settings the joint-embedding plugins share, and the :class:`ViewAugmentation` built from them.

SimCLR, BYOL, MoCo, DINO, Barlow Twins and VICReg all expose the same knobs of the view pipeline (``strength``,
``jitter_probability``, ``gray_probability``, ``min_scale``, ``blur``, ``solarize``) with the same names, types and
ranges; only their defaults and the paper values in their help differ. :func:`view_settings` declares them once,
:func:`view_augmentation` turns a task's resolved settings (``self.hparams``) into the pipeline::

    settings = (TaskSetting("temperature", float, 0.5, "..."), *view_settings(solarize=None, blur_modes=False))

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.augmentation = view_augmentation(self.hparams, context.image_size)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl_engine.settings import TaskSetting
from ssl_engine.views.pipeline import ViewAugmentation

BYOL_BLUR = (1.0, 0.1)  # chance of a blur on the first and on the second view (Grill et al. 2020, Table 6)
BLUR_FROM = 64  # blur=auto blurs images of at least this side


def view_settings(
    *,
    strength: str = "paper: 0.4, 0.4, 0.2, 0.1",
    jitter: bool = True,
    min_scale: float | None = 0.08,
    min_scale_paper: str = "paper: 0.08",
    blur_modes: bool = True,
    blur_help: str = "Gaussian blur on every first view and 10% of the second (paper); auto: only from 64 px up",
    solarize: float | None = 0.2,
    solarize_help: str = "chance the second view is solarized (paper: 0.2; never the first)",
    solarize_name: str = "solarize",
) -> tuple[TaskSetting, ...]:
    """The view pipeline's settings, in this order: ``strength``, ``jitter_probability``, ``gray_probability``,
    ``min_scale``, ``blur``, ``solarize``.

    Args:
        strength: the paper's jitter values, in the help's parentheses (default BYOL's).
        jitter: declare ``jitter_probability`` (0.8) and ``gray_probability`` (0.2).
        min_scale: the default smallest crop area (a fraction of the image's); ``None``: no ``min_scale`` (a task
            with crop scales of its own, as DINO's global and local ones).
        min_scale_paper: the paper's value, in the help's parentheses.
        blur_modes: ``blur`` is ``auto``/``on``/``off`` (default ``auto``: blur from :data:`BLUR_FROM` px up, see
            :func:`view_augmentation`); ``False``: a flag, off by default.
        blur_help: the help of ``blur``.
        solarize: the default chance that the second view is solarized; ``None``: no solarization setting.
        solarize_help: its help.
        solarize_name: its name (DINO: ``solarize_probability``).
    """
    settings = [
        TaskSetting(
            "strength",
            float,
            0.5,
            f"colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s ({strength})",
            minimum=0.0,
            maximum=2.5,  # torchvision's bound: hue shifts up to half the colour wheel
        )
    ]
    if jitter:
        chances = (("jitter_probability", 0.8, "colour-jittered"), ("gray_probability", 0.2, "made gray"))
        for name, chance, what in chances:
            text = f"chance a view is {what} (paper: {chance})"
            settings.append(TaskSetting(name, float, chance, text, minimum=0, maximum=1))
    if min_scale is not None:
        text = f"smallest crop, a fraction of the image area ({min_scale_paper})"
        settings.append(TaskSetting("min_scale", float, min_scale, text, minimum=0.01, maximum=1))
    if blur_modes:
        settings.append(TaskSetting("blur", str, "auto", blur_help, choices=("auto", "on", "off")))
    else:
        settings.append(TaskSetting("blur", bool, False, blur_help))
    if solarize is not None:
        settings.append(TaskSetting(solarize_name, float, solarize, solarize_help, minimum=0, maximum=1))
    return tuple(settings)


def blurs(mode: str, image_size: int) -> bool:
    """Whether ``blur`` = ``auto``/``on``/``off`` blurs images of side ``image_size``.

    ``auto`` blurs from :data:`BLUR_FROM` px up: the papers' sigma (0.1-2 px) is mild at 224 px but flattens a tenth
    of a 32 px image, wiping out small objects (solo-learn turns the blur off on CIFAR for the same reason).
    """
    return mode == "on" or (mode == "auto" and image_size >= BLUR_FROM)


def view_augmentation(
    hparams: Mapping[str, Any],
    image_size: int,
    *,
    blur_probabilities: tuple[float, float] = BYOL_BLUR,
    solarize_when_zero: bool = False,
) -> ViewAugmentation:
    """The two-view pipeline of a task's resolved :func:`view_settings` (``self.hparams``).

    Args:
        hparams: the task's settings: ``strength``, ``jitter_probability``, ``gray_probability``, ``min_scale``,
            ``blur`` and, if declared, ``solarize``.
        image_size: the side of the images, for ``blur=auto``.
        blur_probabilities: per view, the chance of a blur when ``blur`` (a mode) blurs (default BYOL's asymmetric
            one); a ``blur`` flag blurs half the views instead (SimCLR's).
        solarize_when_zero: draw the solarization even at ``solarize`` 0 (BYOL: the views' parameters then say
            ``solarized``, all false); otherwise it is left out.
    """
    blur = hparams["blur"]
    solarize: float | None = hparams.get("solarize")
    solarizing = None if solarize is None or not (solarize > 0 or solarize_when_zero) else (0.0, solarize)
    return ViewAugmentation(
        strength=hparams["strength"],
        jitter_probability=hparams["jitter_probability"],
        gray_probability=hparams["gray_probability"],
        min_scale=hparams["min_scale"],
        blur=blur if isinstance(blur, bool) else False,
        views=len(blur_probabilities),
        blur_probabilities=blur_probabilities if not isinstance(blur, bool) and blurs(blur, image_size) else None,
        solarize_probabilities=solarizing,
    )
