"""The pretext-task contract: what a task plugin implements and what the core does with it.

A task is a subclass of :class:`PretextTask` registered through the ``register_tasks`` hook. One training step,
as the core runs it for every task in the (possibly mixed) run::

    clock.step = step                                   # what every task sees: self.context.clock
    images  (B, 3, H, W) float in [0, 1], base-augmented, on the device
    batch   = task.pseudo_labels(images, random)        # PretextBatch: views, targets; one vectorised pass
    output  = task.forward(backbone, modules, aux, batch)  # TaskOutput: named loss terms, metrics
    total  += weight_of_task * sum(task.loss_weights[t] * output.losses[t])
    ... total.backward(); optimizer.step()              # backbone + every task's trainable ``modules``
    aux_terms = task.aux_losses(aux, batch, output)     # e.g. the discriminator, on detached outputs
    ... sum(aux_terms).backward(); aux_optimizer.step() # only the task's ``aux`` modules
    task.after_step(backbone, modules, aux, batch, output)  # no grad: EMA teachers, queues, centres

Step-aware tasks (momentum teachers, queues, schedules) keep their state in modules and registered buffers of
``modules`` (so checkpoints save and restore it): a parameter with ``requires_grad=False`` is left out of the main
optimizer (a teacher updated by :meth:`PretextTask.after_step`), and :meth:`PretextTask.setup` sees the shared
backbone once after building, e.g. to start a teacher as a copy of it. Views of several resolutions (multi-crop)
go in :attr:`PretextBatch.inputs` (the first resolution) and :attr:`PretextBatch.crops` (the others), each batched.

How the eight tasks of the project fit it:

========== ===================== ===================================== =========================== ==========
task       views per image       modules (head kind)                   loss terms                  represent.
========== ===================== ===================================== =========================== ==========
rotation   4 rotated copies      classifier on pooled features         ``rotation`` CE over 4      backbone
jigsaw     9 tiles               classifier on 9 concatenated pooled   ``jigsaw`` CE over perms    backbone
relpatch   2 patches             classifier on 2 concatenated pooled   ``position`` CE over 8      backbone
inpainting 1 masked image        decoder on the spatial map; aux:      ``reconstruction`` l2 on    backbone
                                 discriminator                         the hole, ``adversarial``
superres   1 blurred image       decoder (residual); aux: discrim.     ``pixel`` l2, ``adversarial`` backbone
colorize   1 lightness image     decoder to ab                         ``color`` l2 or binned CE   backbone on
                                                                                                   lightness
splitbrain L and ab               second backbone + two decoders;       ``l_to_ab``, ``ab_to_l``    both nets
                                 ``shares_backbone = False``                                       concat
simclr     2 augmented views     MLP projection                        ``contrastive`` NT-Xent     backbone
========== ===================== ===================================== =========================== ==========

Losses see the whole local batch at once (a contrastive loss couples all samples); a task that needs samples of
other processes gathers them itself in :meth:`PretextTask.forward` (``torch.distributed`` is initialised by then).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from ssl_engine.backbones.base import Backbone
from ssl_engine.config import OPTIMIZER_NAMES
from ssl_engine.drawing import default_drawing
from ssl_engine.images import normalize
from ssl_engine.randomness import BatchRandom
from ssl_engine.settings import TaskSetting, resolve_settings

HeadFactory = Callable[..., nn.Module]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TaskDeclarationError(TypeError):
    """A task class is missing part of the contract (raised when it is registered)."""


class ImageSizeError(ValueError):
    """The images are smaller than a task needs; the message names the task and its minimum."""


@dataclass
class PretextBatch:
    """What :meth:`PretextTask.pseudo_labels` makes from a batch of ``B`` images.

    Attributes:
        inputs: the views, stacked on the batch axis: ``(B * views, C, h, w)``, ready for the network
            (already normalised). Sample ``i``'s views are rows ``i * views ... i * views + views - 1``.
        targets: pseudo-labels; ``(B * views,)`` integer classes, ``(B,)`` or a dense tensor for regression.
        views: views per image.
        extras: anything else the task's forward or drawing needs (masks, originals, permutation indices).
        crops: views at further resolutions (multi-crop), see :meth:`resolutions`; empty for one resolution.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    views: int = 1
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    crops: tuple[torch.Tensor, ...] = ()

    def resolutions(self) -> list[torch.Tensor]:
        """Every view tensor, one per resolution: ``[inputs, *crops]``.

        Multi-crop (Caron et al. 2020/2021): ``inputs`` holds the views of the first resolution, ``(B * v0, C,
        h0, w0)``, and each of ``crops`` those of another, ``(B * v_r, C, h_r, w_r)``, sample-major like
        ``inputs``; ``views`` is the total ``v0 + sum(v_r)``. Run the backbone once per resolution (batched).
        """
        return [self.inputs, *self.crops]


@dataclass
class TaskOutput:
    """What :meth:`PretextTask.forward` returns.

    Attributes:
        losses: named, unweighted scalar loss terms; each is logged on its own, weighted by
            :attr:`PretextTask.loss_weights` and summed.
        metrics: detached scalars; the one named :attr:`PretextTask.metric` is the pretext metric shown in the
            progress bar (e.g. ``accuracy`` or ``psnr``).
        predictions: the task's predictions (logits, reconstructions) for drawing and aux losses.
        extras: tensors ``forward`` hands on to :meth:`PretextTask.aux_losses` and :meth:`PretextTask.after_step`
            (MoCo's keys for its queue, a teacher's outputs for a centre); not logged.
    """

    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    predictions: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepClock:
    """Where training is, shared by every task of a run: the core sets ``step`` before each step.

    Attributes:
        step: the optimisation step being computed (0-based; the step a resumed run continues from).
        total: the run's budget in steps (0 outside training: ``sslx show``, evaluation, tests).
    """

    step: int = 0
    total: int = 0

    @property
    def progress(self) -> float:
        """``step / total`` in [0, 1] (0 when there is no budget), for schedules such as cosine momentum."""
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0


@dataclass(frozen=True)
class TaskContext:
    """What the core hands a task when it is built.

    Attributes:
        settings: validated settings (declared defaults overlaid with the user's).
        image_size: side of the square training images.
        in_channels: channels of the images (3: grayscale data is promoted to RGB).
        feature_dim: channels ``D`` of the backbone's feature map.
        feature_stride: downsampling of the backbone's feature map (for decoders).
        make_head: the head chosen for the task (its default or ``--head TASK=NAME``); called as
            ``make_head(in_features, out_features)`` for classifiers or
            ``make_head(in_channels, out_channels, scale)`` for decoders.
        loss_fn: the loss chosen for the task (its default or ``--loss TASK=NAME``).
        make_backbone: builds a fresh backbone of the run's kind, ``make_backbone(in_channels)``, for tasks
            with more than one network (split-brain) or a momentum teacher (BYOL, MoCo, DINO).
        clock: the step and the budget (:class:`StepClock`), read during training for schedules.
        global_batch: images per step over all processes (``--batch-size`` times the process count), for
            settings that must fit it, e.g. MoCo's queue (0 when not known).
    """

    settings: Mapping[str, Any]
    image_size: int
    in_channels: int
    feature_dim: int
    feature_stride: int
    make_head: HeadFactory
    loss_fn: LossFunction
    make_backbone: Callable[[int], Backbone]
    clock: StepClock = field(default_factory=StepClock)
    global_batch: int = 0

    @property
    def total_steps(self) -> int:
        """The run's budget in steps (0 outside training)."""
        return self.clock.total


class Representation(nn.Module):
    """Frozen-feature extractor for downstream evaluation and export.

    Maps float images ``(B, 3, H, W)`` in [0, 1] to features ``(B, D)``; the default is the shared backbone fed
    normalised RGB, globally average-pooled. Tasks override :meth:`PretextTask.representation` to change the
    input (e.g. the lightness image) or the module (e.g. two concatenated sub-networks).
    """

    def __init__(self, backbone: Backbone, prepare: Callable[[torch.Tensor], torch.Tensor] = normalize) -> None:
        super().__init__()
        self.backbone = backbone
        self.prepare = prepare
        self.feature_dim = backbone.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.pooled(self.prepare(images))


class PretextTask:
    """Base class of every pretext task. Subclass it, set the class attributes, implement the three methods.

    Class attributes (the declaration, checked at registration):
        name: registry name, what users type (``--task NAME``).
        summary: one line for listings.
        paper: the paper, e.g. ``"Gidaris et al. 2018, Unsupervised Representation Learning by Predicting
            Image Rotations"``.
        views: views per image (documentation and the contract test); a task whose settings change it sets
            ``self.views`` in ``__init__`` (DINO's ``local_crops``).
        settings: declared settings (:class:`~ssl_engine.settings.TaskSetting`), validated on every run.
        min_image_size: smallest image side the task supports; smaller data is refused before training.
        default_image_size: image side used when ``--image-size`` is not given (largest over a mixed run).
        default_optimizer: the optimiser the task's recipe trains with when ``--optimizer`` is not given
            (``"sgd"``, ``"adamw"`` or ``"lars"``; ``None``, the default, leaves it to the engine's SGD). In a mixed
            run it is used when every task that names one names the same; otherwise the run uses SGD and says so.
        needs_color: True if the task is meaningless on grayscale data (it is then refused).
        shares_backbone: False if the task cannot share the backbone with other tasks in a mixed run.
        head_kind: ``"classifier"`` (pooled features) or ``"decoder"`` (spatial map), selecting which
            registered heads the task can be given.
        default_head: registered head used unless ``--head`` says otherwise.
        loss_kind: ``"classification"`` or ``"regression"``, selecting which registered losses fit.
        default_loss: registered loss used unless ``--loss`` says otherwise.
        metric: the pretext metric's key in :attr:`TaskOutput.metrics`.
        loss_weights: weight of each named loss term (tasks may set it per instance from settings).

    Instance attributes: ``context`` (:class:`TaskContext`) and ``hparams``, the resolved values of ``settings``
    (``self.hparams["permutations"]``; defaults filled in, every value validated).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    views: int = 1  # an instance may set its own from its settings (see above)
    settings: ClassVar[tuple[TaskSetting, ...]] = ()
    min_image_size: ClassVar[int] = 16
    default_image_size: ClassVar[int] = 32
    default_optimizer: ClassVar[str | None] = None
    needs_color: ClassVar[bool] = False
    shares_backbone: ClassVar[bool] = True
    head_kind: ClassVar[str] = "classifier"
    default_head: ClassVar[str] = "linear"
    loss_kind: ClassVar[str] = "classification"
    default_loss: ClassVar[str] = "cross_entropy"
    metric: ClassVar[str] = "accuracy"

    def __init__(self, context: TaskContext) -> None:
        self.context = context
        self.hparams: Mapping[str, Any] = context.settings
        self.loss_weights: dict[str, float] = {}

    @property
    def config(self) -> Mapping[str, Any]:
        """Deprecated name of :attr:`hparams` (the task's resolved settings; ``config`` is the run's
        ``PretrainConfig`` everywhere else). Kept working, with a ``DeprecationWarning``, for plugins written
        before sslx 0.2."""
        warnings.warn(
            f"{type(self).__name__}.config is deprecated: the task's settings are self.hparams",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.hparams

    # --- declaration -------------------------------------------------------------------------------------------
    @classmethod
    def check_declaration(cls) -> None:
        """Raise :class:`TaskDeclarationError` if the class attributes don't make a usable task."""
        problems = []
        if not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
            problems.append("`name` must be a non-empty identifier")
        if cls.head_kind not in ("classifier", "decoder"):
            problems.append("`head_kind` must be 'classifier' or 'decoder'")
        if cls.loss_kind not in ("classification", "regression"):
            problems.append("`loss_kind` must be 'classification' or 'regression'")
        if cls.default_optimizer is not None and cls.default_optimizer not in OPTIMIZER_NAMES:
            problems.append(f"`default_optimizer` must be None or one of {', '.join(OPTIMIZER_NAMES)}")
        if cls.views < 1 or cls.min_image_size < 1:
            problems.append("`views` and `min_image_size` must be positive")
        for method in ("build_modules", "pseudo_labels", "forward"):
            if getattr(cls, method) is getattr(PretextTask, method):
                problems.append(f"method `{method}` is not implemented")
        names = [setting.name for setting in cls.settings]
        if len(names) != len(set(names)):
            problems.append("setting names repeat")
        try:
            resolve_settings(cls.name, cls.settings, {})
        except ValueError as error:
            problems.append(f"a declared default is invalid ({error})")
        if problems:
            raise TaskDeclarationError(f"task class {cls.__qualname__}: " + "; ".join(problems))

    @classmethod
    def loss_choice(cls, settings: Mapping[str, Any]) -> tuple[str | None, str]:
        """``(loss_kind, default_loss)`` for a task with these resolved settings.

        The class attributes, unless the task overrides this because a setting switches it between a
        classification and a regression loss (split-brain's ``loss_mode``): ``--loss`` is then checked against,
        and used by, the mode the run is in. A kind of ``None`` says the task computes its own loss with these
        settings (colorization's rebalanced classification), so a ``--loss`` for it is refused rather than ignored;
        ``context.loss_fn`` is then ``default_loss``.
        """
        return cls.loss_kind, cls.default_loss

    @classmethod
    def check_images(cls, image_size: int, channels_are_color: bool = True) -> None:
        """Refuse data the task can't use, before training starts."""
        if image_size < cls.min_image_size:
            raise ImageSizeError(
                f"task {cls.name!r} needs images of at least {cls.min_image_size} px; got {image_size} px "
                f"(raise --image-size)"
            )
        if cls.needs_color and not channels_are_color:
            raise ImageSizeError(f"task {cls.name!r} needs colour images; the data set is grayscale")

    # --- to implement ------------------------------------------------------------------------------------------
    def build_modules(self) -> nn.ModuleDict:
        """Modules trained together with the backbone by the main optimizer (heads, decoders).

        Use ``self.context.make_head`` for the head so ``--head`` works.
        """
        raise NotImplementedError

    def build_aux_modules(self) -> nn.ModuleDict:
        """Auxiliary modules with their own optimizer, updated in the same step (e.g. a discriminator)."""
        return nn.ModuleDict()

    def pseudo_labels(self, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        """Make the pretext batch from the whole image batch, vectorised, on the images' device.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], already base-augmented.
            random: the only source of randomness allowed here (so the labels depend only on seed, step and
                each sample's place in the global batch).

        Returns:
            The views (normalised, ready for the backbone), the targets and any extras.
        """
        raise NotImplementedError

    def forward(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch
    ) -> TaskOutput:
        """Run the networks on the pretext batch and compute the named loss terms and the pretext metric."""
        raise NotImplementedError

    def setup(self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict) -> None:
        """Called once after the whole model is built (before a checkpoint is restored into it), with the shared
        backbone: e.g. start a momentum teacher as a copy of it. The default does nothing."""

    def after_step(
        self,
        backbone: Backbone,
        modules: nn.ModuleDict,
        aux: nn.ModuleDict,
        batch: PretextBatch,
        output: TaskOutput,
    ) -> None:
        """Called after every optimizer step (main and aux), under ``torch.no_grad()``, with the step's batch and
        output: momentum (EMA) updates of teachers, queue pushes, centre updates. ``self.context.clock.step`` is
        the step just taken. State changed here must live in ``modules`` (parameters with ``requires_grad=False``
        or registered buffers) so checkpoints keep it, and must depend only on the run's tensors (the same on
        every process under torchrun: gather what other processes hold first). The default does nothing."""

    def aux_losses(self, aux: nn.ModuleDict, batch: PretextBatch, output: TaskOutput) -> dict[str, torch.Tensor]:
        """Named loss terms of the auxiliary modules, minimised by their own optimizer after the main step.

        Detach anything that comes from the main networks. The default (no aux modules) returns nothing.
        """
        return {}

    def draw(self, images: torch.Tensor, batch: PretextBatch, output: TaskOutput | None) -> Image.Image:
        """A picture of the pretext batch for ``sslx show`` (override to draw it the way the paper does).

        Args:
            images: the originals ``(N, 3, S, S)`` in [0, 1].
            batch: ``pseudo_labels`` of those images.
            output: the model's output on the batch after a run (``None`` before training).
        """
        predictions = output.predictions if output is not None else None
        return default_drawing(images, batch, predictions, f"{self.name}: {self.summary}")

    def representation(self, backbone: Backbone, modules: nn.ModuleDict) -> Representation:
        """The frozen features used downstream: by default the backbone on normalised RGB."""
        return Representation(backbone)

    # --- helpers for implementations -----------------------------------------------------------------------------
    def weighted_total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum(loss_weights.get(name, 1) * term)`` over the named terms."""
        return sum(
            (self.loss_weights.get(name, 1.0) * term for name, term in losses.items()),
            start=torch.zeros((), device=next(iter(losses.values())).device),
        )


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of logits ``(N, K)`` against integer targets ``(N,)``, a detached scalar."""
    return (logits.detach().argmax(dim=1) == targets).float().mean()
