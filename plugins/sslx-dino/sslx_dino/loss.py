"""DINO's loss: cross-entropy from the centred, sharpened teacher to the student, over pairs of different views.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (ICCV), Eq. 3 and Algorithm 1::

    P_s(x) = softmax(g_s(x) / tau_s)                  student, every view (2 global + N local crops)
    P_t(x) = softmax((g_t(x) - C) / tau_t)            teacher, global views only, centred by C, no gradient
    loss   = mean over pairs (x in globals, x' in all views, x' != x) of  H(P_t(x), P_s(x')),  H(a, b) = -a . log b
    C      = m * C + (1 - m) * mean over the batch's teacher outputs          after each step (m = 0.9)

The pairs' mean and the centre's batch mean follow the authors' code (``DINOLoss``): each pair's cross-entropy is
averaged over the images, then the pairs are averaged; under ``torchrun`` the centre's mean runs over the global
batch (their ``all_reduce``), so every process keeps the same centre.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ssl_engine import api


def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    centre: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DINO loss of one batch and the teacher's distributions.

    Args:
        student: ``(B, V, K)`` logits of every view of each image; views ``0 .. G - 1`` are the global views the
            teacher saw, in the same order.
        teacher: ``(B, G, K)`` logits of the global views (detached here).
        centre: ``(1, K)`` or ``(K,)``, subtracted from the teacher's logits.
        student_temperature: ``tau_s`` (paper: 0.1).
        teacher_temperature: ``tau_t`` (paper: 0.04 warmed up to 0.07).

    Returns:
        The scalar loss (float32) and the teacher's distributions ``(B, G, K)``.
    """
    if student_temperature <= 0 or teacher_temperature <= 0:
        raise ValueError(f"temperatures must be positive, got {student_temperature} and {teacher_temperature}")
    globals_, views = teacher.shape[1], student.shape[1]
    if views < 2 or globals_ > views or student.shape[0] != teacher.shape[0] or student.shape[2] != teacher.shape[2]:
        raise ValueError(f"student logits {tuple(student.shape)} do not fit teacher logits {tuple(teacher.shape)}")
    # Softmaxes in float32 even under autocast: tau_t = 0.04 multiplies the logits by 25.
    with torch.autocast(student.device.type, enabled=False):
        targets = F.softmax((teacher.detach().float() - centre.float()) / teacher_temperature, dim=-1)  # (B, G, K)
        log_probabilities = F.log_softmax(student.float() / student_temperature, dim=-1)  # (B, V, K)
        cross_entropy = -torch.einsum("bgk,bvk->gv", targets, log_probabilities) / len(student)  # (G, V), mean over B
        different = ~torch.eye(globals_, views, dtype=torch.bool, device=student.device)  # pairs x != x'
        loss = cross_entropy[different].mean()
    return loss, targets


def teacher_temperature(step: int, start: float, end: float, warmup_steps: int) -> float:
    """The teacher temperature at ``step``: linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then
    ``end`` (paper: 0.04 to 0.07 over the first 30 epochs, ``np.linspace`` per epoch)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@torch.no_grad()
def updated_centre(centre: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``momentum * centre + (1 - momentum) * mean of the teacher's logits`` over the global batch.

    Args:
        centre: ``(1, K)`` the centre so far.
        teacher: ``(N, K)`` this process's teacher logits of the step (every global view); under ``torchrun``
            every process's are gathered, so all of them keep the same centre (``N`` the same on each).
        momentum: ``m`` in [0, 1] (paper: 0.9).

    Returns:
        The new centre ``(1, K)``, in the centre's dtype.
    """
    every = api.gather_from_all_ranks(teacher.detach().float())  # (W * N, K)
    batch_centre = every.mean(0, keepdim=True)  # (1, K)
    return (momentum * centre.float() + (1 - momentum) * batch_centre).to(centre.dtype)
