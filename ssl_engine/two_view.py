"""Two-view tasks: two augmented views of every image, each view's target its twin (SimCLR, Barlow Twins, VICReg).

:class:`TwoViewTask` holds what these tasks share: the views and their targets (:meth:`TwoViewTask.pseudo_labels`),
the head (:meth:`TwoViewTask.build_modules`) and the picture (:meth:`TwoViewTask.draw`); a task adds its settings,
its augmentation and its loss (``forward``). Two pieces of such a ``forward`` are here too:
:func:`per_view_embeddings`, each view through the networks on its own and the global batch gathered (Barlow
Twins, VICReg), and :func:`view_matching`, the monitor of how often a view's nearest neighbour is its twin.

Layout, in every process: image ``b`` of the local batch has its views at rows ``2b`` and ``2b + 1``; the global
batch is the processes' local batches rank by rank (:class:`~ssl_engine.randomness.BatchRandom`'s ``offset`` is
a process's first image in it), so row ``2n + v`` of the gathered views is view ``v`` of global image ``n``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ssl_engine.backbones.base import Backbone
from ssl_engine.distributed import gather_from_all_ranks, is_distributed
from ssl_engine.drawing import MATCHED_EMBEDDING, two_view_drawing
from ssl_engine.images import normalize
from ssl_engine.randomness import BatchRandom
from ssl_engine.task import PretextBatch, PretextTask, TaskOutput
from ssl_engine.views.pipeline import ViewAugmentation

VIEWS = 2


class TwoViewTask(PretextTask):
    """A task on two augmented views of every image, whose target for each view is the other one, its twin.

    Views: 2 per image, rows ``2b`` and ``2b + 1`` for image ``b``. Targets: ``(B * 2,)`` int64, the global row of
    each view's twin, ``2 * (offset + b) + (1 - v)`` for view ``v`` of local image ``b``: the positive of SimCLR's
    NT-Xent (Chen et al. 2020), the answer of Barlow Twins' and VICReg's matching monitor.

    A subclass declares :attr:`embedding_dim_setting`, the setting that is the width ``P`` of its embeddings, sets
    ``self.augmentation`` in ``__init__`` (usually :func:`~ssl_engine.views.settings.view_augmentation` of its
    settings) and writes ``forward``. Its module is ``head``, the run's head ``make_head(D, P)``.

    Attributes:
        embedding_dim_setting: the name of the setting giving the head's output width ``P``.
        caption: what the labels of ``sslx show``'s picture mean (default: the view whose embedding each view's
            should match).
        augmentation: the two-view pipeline, built by the subclass.
    """

    views = VIEWS
    embedding_dim_setting: ClassVar[str]
    caption: ClassVar[str] = MATCHED_EMBEDDING
    augmentation: ViewAugmentation

    def build_modules(self) -> nn.ModuleDict:
        """``head``: the run's head, ``(N, D) -> (N, P)``."""
        width = self.hparams[self.embedding_dim_setting]
        return nn.ModuleDict({"head": self.context.make_head(self.context.feature_dim, width)})

    def pseudo_labels(self, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        """Two augmented views of every image and the global row of each view's twin.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness.

        Returns:
            inputs ``(B * 2, 3, S, S)`` normalised; targets ``(B * 2,)`` int64; views 2; extras: the drawn
            parameters of every view (``boxes``, ``flips``, ``jittered``, ``jitter``, ``jitter_order``, ``gray``
            and, as the settings ask, ``blurred``, ``sigma`` and ``solarized``; see :meth:`ViewAugmentation.draw`),
            each ``(B, 2, ...)``.
        """
        # Sampling weights and colour arithmetic stay in float32 even inside the trainer's bfloat16 autocast.
        with torch.autocast(images.device.type, enabled=False):
            views, drawn = self.augmentation(images.float(), random)  # (B*2, 3, S, S)
        rows = 2 * random.offset + torch.arange(len(views), device=images.device)  # global rows of these views
        return PretextBatch(normalize(views), rows ^ 1, views=VIEWS, extras=drawn)

    def draw(self, images: torch.Tensor, batch: PretextBatch, output: TaskOutput | None) -> Image.Image:
        """``sslx show``: each image and its two views; under each view the view it must be matched with (after
        a run: the one the model picked, in red when wrong)."""
        predictions = output.predictions if output is not None else None
        return two_view_drawing(images, batch, predictions, f"{self.name}: {self.summary}", self.caption)


def per_view_embeddings(backbone: Backbone, head: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings of the first and of the second views over the global batch, each view through the networks
    on its own, as Barlow Twins' ``f(y_a)``, ``f(y_b)`` (Zbontar et al. 2021, Algorithm 1) and VICReg's code do:
    batch norm sees one view's batch at a time.

    Under torchrun every process's rows are gathered, differentiably (the papers' code gathers the embeddings or
    all-reduces their statistics), so a loss on them is the global batch's on every process.

    Args:
        backbone: the shared backbone.
        head: ``(B, D) -> (B, P)``, the projector.
        inputs: the views ``(B * 2, 3, S, S)`` of :meth:`TwoViewTask.pseudo_labels`.

    Returns:
        ``z_a``, ``z_b``: ``(N, P)`` float32 each (``N = W * B``, rank-major), whatever the autocast.
    """
    views = inputs.unflatten(0, (-1, VIEWS))  # (B, 2, 3, S, S)
    z_a = head(backbone.pooled(views[:, 0]))  # (B, P)
    z_b = head(backbone.pooled(views[:, 1]))  # (B, P)
    with torch.autocast(z_a.device.type, enabled=False):
        return gather_from_all_ranks(z_a.float()), gather_from_all_ranks(z_b.float())  # (N, P) each


def view_matching(z_a: torch.Tensor, z_b: torch.Tensor, count: int) -> torch.Tensor:
    """Cosine similarities of this process's views to every view of the global batch (a monitor, not a loss).

    With :class:`TwoViewTask`'s targets, ``accuracy(logits, targets)`` is how often a view's nearest neighbour among
    the ``2N - 1`` other views is its twin.

    Args:
        z_a, z_b: ``(N, P)``, the global batch's embeddings of the first and second views, rank-major.
        count: images on this process ``B`` (the same on every process).

    Returns:
        ``(2B, 2N)``: row ``2b + v`` is view ``v`` of local image ``b``, column ``2n + v'`` view ``v'`` of global
        image ``n``; ``-inf`` at each view's own column, so ``argmax`` is its nearest other view.
    """
    first = torch.distributed.get_rank() * count if is_distributed() else 0
    views = F.normalize(torch.stack([z_a, z_b], dim=1).flatten(0, 1), dim=1)  # (2N, P), sample-major
    own = 2 * first + torch.arange(2 * count, device=views.device)  # (2B,)
    logits = views[own] @ views.T  # (2B, 2N)
    return logits.scatter(1, own[:, None], float("-inf"))
