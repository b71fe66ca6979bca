"""An online linear probe: a linear classifier trained during pretraining on detached features of each batch.

Users see representation quality while the run goes (as in SimCLR/BYOL implementations that track it); it never
changes the backbone (features are computed without gradients, in eval mode so batch-norm statistics are not
touched) and is off unless ``--online-probe`` is given.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ssl_engine.distributed import SINGLE, World, average_gradients
from ssl_engine.task import Representation


class OnlineProbe(nn.Module):
    """Linear classifier ``(B, D) -> (B, classes)`` with its own Adam optimizer.

    Args:
        feature_dim: ``D`` of the representation.
        classes: number of labels of the data set.
        lr: Adam's learning rate.
    """

    def __init__(self, feature_dim: int, classes: int, lr: float = 5e-3) -> None:
        super().__init__()
        self.classifier = nn.Linear(feature_dim, classes)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=lr)

    def step(
        self, representation: Representation, images: torch.Tensor, labels: torch.Tensor, world: World = SINGLE
    ) -> dict[str, torch.Tensor]:
        """Train one step on images ``(B, 3, S, S)`` in [0, 1] with labels ``(B,)`` (gradients averaged over
        ``world``'s processes); returns loss and accuracy as 0-d tensors on the device."""
        was_training = representation.training
        representation.eval()
        with torch.no_grad():
            features = representation(images).float()
        representation.train(was_training)
        logits = self.classifier(features)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.classifier, world)
        self.optimizer.step()
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return {"probe/loss": loss.detach(), "probe/accuracy": accuracy}


def count_classes(dataset: object, labels: torch.Tensor | None) -> int:
    """Number of classes: the data set's ``classes`` when it has them, else from the labels held in memory."""
    names = getattr(dataset, "classes", None)
    if names:
        return len(names)
    if labels is not None and (labels >= 0).any():
        return int(labels.max()) + 1
    raise ValueError("--online-probe needs a labelled data set whose classes are known")
