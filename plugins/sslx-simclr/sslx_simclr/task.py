"""SimCLR: Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML).

Two random views of every image (:mod:`sslx_simclr.augment`) go through the backbone and a projection head
``g`` (an MLP); NT-Xent (:mod:`sslx_simclr.loss`) pulls the two projections of an image together and pushes them
away from the other ``2N - 2`` views of the global batch. Downstream, the head is dropped: the representation is
the backbone's pooled output ``h``, which the paper found better than ``g(h)`` by over 10% (Sec. 4.2).

Defaults follow the paper's CIFAR-10 setup (Appendix B.9), the closest to this engine's small images: 32 px,
colour strength 0.5, no blur, temperature 0.5, projection to 128 dimensions.
"""

from __future__ import annotations

from torch import nn

from ssl_engine import api
from sslx_simclr.loss import NTXentLoss


class SimCLRTask(api.TwoViewTask):
    """Tell which of the other views of the batch shows the same image as this one.

    Views: 2 per image, rows ``2b`` and ``2b + 1`` for image ``b``. Targets: ``(B * 2,)``, the global row of each
    view's positive, ``2 * (offset + b) + (1 - v)`` for view ``v`` of local image ``b``, where ``offset`` is the
    process's first image in the global batch. On several processes the views are gathered rank by rank, so these
    rows index the gathered views as long as rank ``r`` holds the ``r``-th slice of the global batch (the layout
    the design prescribes; the loss refuses targets that point outside the gathered views or at the view itself).

    Head: ``make_head(D, projection_dim)``, by default the registered ``mlp`` (Linear-BN-ReLU-Linear, hidden 512).
    Loss: the registered classification loss (default cross-entropy) over the similarity logits, i.e. NT-Xent.
    Metric: ``accuracy``, how often the positive is the most similar of the ``2N - 1`` other views.
    """

    name = "simclr"
    summary = "contrastive: match the two augmented views of each image among the global batch (NT-Xent)"
    paper = (
        "Chen, Kornblith, Norouzi & Hinton 2020, A Simple Framework for Contrastive Learning of Visual Representations"
    )
    default_image_size = 32
    default_head = "mlp"
    embedding_dim_setting = "projection_dim"
    caption = "Under each view: the view it is to be matched with (the other view of its image) among all 2N views."
    settings = (
        api.temperature_setting(0.5, "NT-Xent temperature (paper: 0.5 on CIFAR-10, 0.1 on ImageNet)"),
        api.TaskSetting("projection_dim", int, 128, "output size of the projection head (paper: 128)", minimum=1),
        *api.view_settings(
            strength="paper: 0.5 on CIFAR-10, 1 on ImageNet",
            blur_modes=False,
            blur_help="Gaussian-blur half the views (paper: ImageNet only, not small images)",
            solarize=None,
        ),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        config = self.hparams
        self.augmentation = api.view_augmentation(config, context.image_size)  # blur: a flag, half the views
        self.loss = NTXentLoss(config["temperature"], cross_entropy=context.loss_fn)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Embed both views of every image and score them with NT-Xent.

        Args:
            backbone: the shared backbone.
            modules: ``{"head": (B * 2, D) -> (B * 2, projection_dim)}``.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``contrastive`` loss, ``accuracy``, and the similarity logits ``(B * 2, W * B * 2)`` over every
            view of the global batch (``-inf`` at each view's own column).
        """
        projections = modules["head"](backbone.pooled(batch.inputs))  # (B*2, P)
        loss, logits = self.loss(projections, batch.targets)
        return api.TaskOutput({"contrastive": loss}, {"accuracy": api.accuracy(logits, batch.targets)}, logits)
