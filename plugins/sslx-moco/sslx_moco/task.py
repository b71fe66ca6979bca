"""MoCo: momentum contrast. He, Fan, Wu, Xie & Girshick 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning" (CVPR); v2: Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive
Learning" (arXiv:2003.04297); v3: Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers" (ICCV).

Two augmented views of every image. The query encoder (the shared backbone and an MLP projection head) encodes one
view; the key encoder, a copy of both that is not trained by the loss but follows the query encoder as an
exponential moving average after every optimizer step (``key = m * key + (1 - m) * query``, He et al. 2020,
Eq. 2), encodes the other. The loss is InfoNCE (:mod:`sslx_moco.loss`):

* ``version=2`` (default): each query against its own key and a queue of ``queue_size`` keys of earlier batches
  (the negatives), temperature 0.2; after the step, the keys of the global batch replace the oldest in the queue.
  Under ``torchrun`` every process pushes the keys of every process (gathered in rank order), so the queue is the
  one a single process with the global batch would hold. The momentum is constant (paper).
* ``version=3``: no queue. Both views are queries, through an extra prediction MLP, each against the keys of the
  other view of every image in the global batch (gathered), symmetrised and scaled by ``2 t`` as in the paper's
  code; the momentum rises from ``momentum`` to 1 along a cosine over the run (paper).

Downstream, the heads and the key encoder are dropped: the representation is the query backbone.

Settings and their paper values (ImageNet, ResNet-50, 224 px; v2: batch 256, 200 epochs; v3: batch 4096):

* ``momentum`` 0.99. The v2 paper uses 0.999 over 200 ImageNet epochs (250,000 steps); over a few hundred steps the
  key encoder would then hardly leave its initialisation (its time constant is 1,000 steps), so the default is the
  value solo-learn uses on CIFAR and the v3 paper's starting value. Anything in [0, 1]; 0.999 for long runs.
* ``queue_size`` 4096 (paper 65,536 of ImageNet's 1.28M images; 4096 is 40% of the embedded data's 10,000 training
  images and 7% of CIFAR's 50,000). It must be a multiple of the global batch (``--batch-size`` x processes): each
  step replaces one global batch of keys. Unused by v3.
* ``temperature`` 0.2 (v2 paper; v3 uses 0.2 for ViT and 1.0 for ResNet-50).
* ``projection_dim`` 128 (v2 paper; v3 256); the projection head is the run's head (default ``mlp``,
  Linear-BN-ReLU-Linear, hidden 512; the paper's hidden layer has 2048 units for 2048 features). v3's predictor is
  the same MLP with ``predictor_hidden`` 512 (paper 4096).
* Augmentations, batched on the device by the core's :class:`~ssl_engine.api.ViewAugmentation` (v2 paper): random
  resized crop of area ``min_scale`` 0.2 to 1, flip, colour jitter 0.4/0.4/0.4/0.1 with probability 0.8 (``strength``
  0.5), grayscale 0.2.

Departures, each for small images or for this engine:

* Blur: ``blur=auto`` (the default) blurs from 64 px up, as the papers do on ImageNet (v2: half of the views; v3:
  BYOL's asymmetric every first view and 10% of the second), and not below, where the paper's sigma of up to 2 px is
  a tenth of the image (see the BYOL plugin); ``solarize`` (v3 paper: 0.2 on the second view) is 0 by default.
* The v2 paper's projection MLP has no batch norm; the default ``mlp`` head has (``--head moco=...`` changes it).
  v3's three-layer projector (batch norm on every layer) is the same two-layer head.
* No shuffling batch norm (He et al. 2020, Sec. 3.3): it needs the batch split over several GPUs; here the key
  encoder sees the key views as one batch of its own. With ``--sync-bn`` under ``torchrun`` the statistics are
  those of the global batch, as one process would compute them.
* The query and key views of v3 go through each encoder as one batch of ``2B`` (the paper runs them separately).

Checkpoint keys: the query head under ``task/moco/projector.`` (and v3's ``task/moco/predictor.``), the key encoder
under ``task/moco/key_backbone.`` and ``task/moco/key_projector.`` (frozen: not in the main optimizer, updated only
by :meth:`MoCoTask.after_step`), and v2's queue under ``task/moco/queue`` ``(queue_size, projection_dim)``,
normalised keys, with ``task/moco/queue_next``, the row the next keys go to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ssl_engine import api
from sslx_moco.loss import queue_logits, symmetric_logits

VIEWS = 2
V2_BLUR = (0.5, 0.5)  # v2: half of the views (Chen et al. 2020, as SimCLR)
V3_BLUR = (1.0, 0.1)  # v3: BYOL's asymmetric blur (Chen, Xie & He 2021, Appendix)


class MoCoTask(api.MomentumTeacherTask):
    """Match each query to its key among negatives (v2: a queue; v3: the keys of the global batch).

    Views: 2 per image, rows ``2b`` and ``2b + 1`` for image ``b``: the query view and the key view (v3: each is
    both). Targets: v2 ``(B,)`` zeros, the positive's column among ``1 + queue_size``; v3 ``(B * 2,)``, each view's
    image row in the global batch, the positive's column among the ``W * B`` gathered keys. Loss term
    ``contrastive``; metric ``accuracy``, how often the positive is the most similar candidate.
    """

    name = "moco"
    summary = "contrastive: match each view to a momentum encoder's key of the other among a queue of negatives"
    paper = (
        "He et al. 2020, Momentum Contrast for Unsupervised Visual Representation Learning; v2: Chen et al. 2020, "
        "Improved Baselines with Momentum Contrastive Learning; v3: Chen, Xie & He 2021"
    )
    views = VIEWS
    default_image_size = 32
    default_head = "mlp"
    # The key encoder starts as the query encoder (He et al. 2020, Algorithm 1) and follows it.
    teachers = {"key_backbone": api.SHARED_BACKBONE, "key_projector": "projector"}
    settings = (
        api.TaskSetting(
            "version", int, 2, "2: a queue of negatives (Chen et al. 2020); 3: no queue (2021)", choices=(2, 3)
        ),
        api.momentum_setting(
            "momentum",
            0.99,
            "key encoder EMA momentum (v2 paper: 0.999 for 200 ImageNet epochs; 0.99 for short runs); v3: the start "
            "of a cosine to 1",
        ),
        api.TaskSetting(
            "queue_size",
            int,
            4096,
            "v2: negatives kept, a multiple of the global batch (paper: 65536)",
            minimum=1,
        ),
        api.temperature_setting(0.2, "InfoNCE temperature (paper: 0.2; v3 ResNet: 1.0)"),
        api.TaskSetting("projection_dim", int, 128, "output size of the projection head (v2: 128; v3: 256)", minimum=1),
        api.TaskSetting("predictor_hidden", int, 512, "v3: hidden units of the predictor (paper: 4096)", minimum=1),
        *api.view_settings(
            strength="paper: 0.4, 0.4, 0.4, 0.1",
            min_scale=0.2,
            min_scale_paper="v2 paper: 0.2; v3: 0.08",
            blur_help="Gaussian blur (v2: half the views; v3: every first view, 10% of the second); auto: from 64 px "
            "up",
            solarize=0.0,
            solarize_help="chance the second view is solarized (v3 paper: 0.2)",
        ),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        config = self.hparams
        self.version: int = config["version"]
        self.temperature: float = config["temperature"]
        batch, queue = context.global_batch, config["queue_size"]
        if self.version == 2 and batch > 0 and queue % batch:
            fits = max(batch, round(queue / batch) * batch)
            raise api.SettingError(
                f"setting moco.queue_size={queue} must be a multiple of the global batch of {batch} images "
                f"(--batch-size x processes): every step replaces one global batch of keys; e.g. "
                f"--set moco.queue_size={fits}"
            )
        blur = V2_BLUR if self.version == 2 else V3_BLUR
        self.augmentation = api.view_augmentation(config, context.image_size, blur_probabilities=blur)

    def build_modules(self) -> nn.ModuleDict:
        dim, projection = self.context.feature_dim, self.hparams["projection_dim"]
        modules = nn.ModuleDict(
            {
                "projector": self.context.make_head(dim, projection),
                "key_backbone": api.freeze(self.context.make_backbone(3)),
                "key_projector": api.freeze(self.context.make_head(dim, projection)),
            }
        )
        if self.version == 3:
            modules["predictor"] = api.mlp_head(projection, projection, hidden=self.hparams["predictor_hidden"])
        else:
            # He et al. 2020, Algorithm 1: the queue starts as random unit vectors.
            queue = F.normalize(torch.randn(self.hparams["queue_size"], projection), dim=1)
            modules.register_buffer("queue", queue)
            modules.register_buffer("queue_next", torch.zeros((), dtype=torch.long))
        return modules

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Two augmented views of every image and the column of each query's positive.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness.

        Returns:
            inputs ``(B * 2, 3, S, S)`` normalised; targets: v2 ``(B,)`` zeros, v3 ``(B * 2,)`` each view's image
            row in the global batch; extras: the drawn parameters of every view (see
            :meth:`~ssl_engine.api.ViewAugmentation.draw`), each ``(B, 2, ...)``.
        """
        with torch.autocast(images.device.type, enabled=False):
            views, drawn = self.augmentation(images.float(), random)  # (B*2, 3, S, S)
        if self.version == 2:
            targets = torch.zeros(len(images), dtype=torch.long, device=images.device)
        else:
            rows = random.offset + torch.arange(len(images), device=images.device)  # (B,)
            targets = rows.repeat_interleave(VIEWS)
        return api.PretextBatch(api.normalize(views), targets, views=VIEWS, extras=drawn)

    def keys(self, modules: nn.ModuleDict, views: torch.Tensor) -> torch.Tensor:
        """The key encoder's normalised keys ``(N, P)`` float32 of views ``(N, 3, S, S)``, without gradient."""
        key_backbone: api.Backbone = modules["key_backbone"]  # type: ignore[assignment]
        with torch.no_grad():
            keys: torch.Tensor = modules["key_projector"](key_backbone.pooled(views))
        return F.normalize(keys.float(), dim=1)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """The InfoNCE loss of the queries against their keys and the negatives.

        Args:
            backbone: the shared (query) backbone.
            modules: ``projector``, ``key_backbone``, ``key_projector``; v2 the ``queue``; v3 ``predictor``.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``contrastive`` loss, ``accuracy``, the logits as predictions (v2 ``(B, 1 + queue_size)``, v3
            ``(B * 2, W * B)``) and, in ``extras``, v2's ``keys`` ``(B, P)`` for the queue.
        """
        if self.version == 2:
            queries = modules["projector"](backbone.pooled(batch.inputs[0::VIEWS]))  # (B, P)
            keys = self.keys(modules, batch.inputs[1::VIEWS])  # (B, P)
            logits = queue_logits(queries, keys, modules.get_buffer("queue"), self.temperature)  # (B, 1 + K)
            loss = self.context.loss_fn(logits, batch.targets)
            extras = {"keys": keys}
        else:
            images = len(batch.inputs) // VIEWS
            queries = modules["predictor"](modules["projector"](backbone.pooled(batch.inputs)))  # (B*2, P)
            keys = self.keys(modules, batch.inputs).view(images, VIEWS, -1)  # (B, 2, P)
            logits = symmetric_logits(queries.view(images, VIEWS, -1), keys, self.temperature)  # (B*2, W*B)
            # The paper's 2t (ctr(q1, k2) + ctr(q2, k1)) is 4t times the mean over both views' queries.
            loss = 4 * self.temperature * self.context.loss_fn(logits, batch.targets)
            extras = {}
        return api.TaskOutput({"contrastive": loss}, {"accuracy": api.accuracy(logits, batch.targets)}, logits, extras)

    def momentum(self) -> float:
        """The key encoder's momentum at the clock's step: constant (v2) or on the cosine to 1 (v3)."""
        base: float = self.hparams["momentum"]
        return base if self.version == 2 else api.cosine_momentum(base, self.context.clock.progress)

    def update_buffers(self, modules: nn.ModuleDict, output: api.TaskOutput) -> None:
        """v2, after the key encoder moved: the global batch's keys replace the oldest in the queue."""
        if self.version == 2:
            keys = api.gather_from_all_ranks(output.extras["keys"])  # (W*B, P): every process's, in global order
            queue, next_row = modules.get_buffer("queue"), modules.get_buffer("queue_next")
            rows = (next_row + torch.arange(len(keys), device=queue.device)) % len(queue)
            queue[rows] = keys.to(queue.dtype)  # the oldest keys out
            next_row.copy_((next_row + len(keys)) % len(queue))

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image and its two views, with the key each query is to be matched with (after a
        run: the key the model picked, in red when wrong)."""
        predictions = output.predictions if output is not None else None
        augmentation = "Each view is a random crop, with what else was done to it under it. "
        if self.version == 2:
            caption = augmentation + (
                "The first view is the query, the second goes through the momentum encoder as its key; under the "
                "image: the key to pick among the queue of negatives (after a run, the one the model picked)."
            )
            labels: Callable[[int], str] = self._queue_label
        else:
            caption = augmentation + (
                "Rows are images 1, 2, ...; under each view: the image whose key (the other view through the "
                "momentum encoder) it is to be matched with among the batch's (after a run, the one picked)."
            )
            labels = self._image_label
        return api.default_drawing(images, batch, predictions, f"{self.name}: {self.summary}", labels=labels,
                               caption=caption, notes=api.augmentation_notes(batch.extras))  # fmt: skip

    @staticmethod
    def _queue_label(index: int) -> str:
        return "its own key" if index == 0 else f"queue key {index}"

    @staticmethod
    def _image_label(row: int) -> str:
        return f"key of image {row + 1}"
