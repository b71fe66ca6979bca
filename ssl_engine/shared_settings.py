"""Settings that several task families declare alike: one declaration each, with the range every paper's value
lies in, so tasks of a family name, type and bound them the same way (the view pipeline's are
:func:`~ssl_engine.views.settings.view_settings`).

* :func:`momentum_setting`: the exponential-moving-average momentum of a teacher (BYOL's target network, MoCo's
  key encoder, DINO's teacher), a float in [0, 1];
* :func:`temperature_setting`: the temperature of a contrastive softmax (SimCLR's NT-Xent, MoCo's InfoNCE) or of the
  annealed mean reading colour bins back (colorization, split-brain), a float in [0.01, 10];
* :func:`projector_dim_setting`: the width of the three-layer projector of Barlow Twins and VICReg (the core's
  ``projector`` head), an int in [1, 65536].

Only the default and the help (with the paper's value) differ from task to task::

    settings = (temperature_setting(0.5, "NT-Xent temperature (paper: 0.5 on CIFAR-10)"), ...)
"""

from __future__ import annotations

from ssl_engine.settings import TaskSetting

MIN_TEMPERATURE = 0.01  # logits 100 times the cosines: sharper than any paper's choice
MAX_TEMPERATURE = 10.0  # logits a tenth of the cosines: all but uniform
PROJECTOR_DIM = 1024  # the papers' 8192 (on a 2048-d ResNet-50) is more than 32 px data on a CPU need or allow
MAX_PROJECTOR_DIM = 65536


def momentum_setting(name: str, default: float, help: str) -> TaskSetting:
    """A teacher's EMA momentum ``m`` (``teacher = m * teacher + (1 - m) * student``): a float in [0, 1], 1 keeping
    the teacher as it is and 0 copying the student (Grill et al. 2020, Sec. 3.1; He et al. 2020, Eq. 2).

    Args:
        name: the setting's name (``momentum``, ``base_momentum``).
        default: the task's default.
        help: one line, with the paper's value.
    """
    return TaskSetting(name, float, default, help, minimum=0.0, maximum=1.0)


def temperature_setting(default: float, help: str) -> TaskSetting:
    """``temperature``, the ``t`` that divides the similarity logits of a contrastive softmax (Chen et al. 2020,
    Eq. 1; He et al. 2020, Eq. 1): a float in [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`].

    Args:
        default: the task's default.
        help: one line, with the paper's value.
    """
    return TaskSetting("temperature", float, default, help, minimum=MIN_TEMPERATURE, maximum=MAX_TEMPERATURE)


def projector_dim_setting(module: str = "projector", default: int = PROJECTOR_DIM) -> TaskSetting:
    """``projector_dim``, the width ``P`` of the three layers of the projector that Barlow Twins (Zbontar et al.
    2021, Fig. 4) and VICReg (Bardes et al. 2022, Table 8, where it is the "expander") put on the backbone: both
    papers use 8192 and find accuracy rising with it; :data:`PROJECTOR_DIM` by default here.

    Args:
        module: what the paper calls the projector, in the help (``"expander"`` for VICReg).
        default: the task's default width, when its small-data recipe differs from :data:`PROJECTOR_DIM`.
    """
    return TaskSetting(
        "projector_dim",
        int,
        default,
        f"width of the {module}'s three layers (paper: 8192; smaller here for 32 px data on a CPU)",
        minimum=1,
        maximum=MAX_PROJECTOR_DIM,
    )
