"""DINO: Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin 2021, "Emerging Properties in Self-Supervised
Vision Transformers" (ICCV): self-distillation with no labels.

A student (the shared backbone and a DINO head, :mod:`sslx_dino.head`) learns to match, on every view of an
image, the output distribution of a teacher of the same architecture on the image's *other* global views
(:mod:`sslx_dino.loss`). The teacher gets no gradient: it is an exponential moving average of the student (momentum
from ``momentum`` to 1 on a cosine schedule over the run), and its outputs are centred (a momentum-updated centre
``C``) and sharpened (a low temperature, optionally warmed up over the first steps), which together avoid collapse.
Multi-crop (Caron et al. 2020, SwAV): each image gives 2 global views and ``local_crops`` smaller local views; the
student sees all of them, the teacher only the globals, which teaches "local-to-global" correspondence.

Every step, as :class:`DINOTask` runs it::

    pseudo_labels  2 global views (B*2, 3, G, G) and N local views (B*N, 3, L, L), batched per resolution
    forward        student logits of every view (B, 2+N, K), once through the backbone per resolution;
                   teacher logits of the globals (B, 2, K) without gradient; loss with the centre C
    after_step     teacher = m * teacher + (1 - m) * student  (backbone and head, m on the cosine schedule)
                   C = 0.9 * C + 0.1 * mean of the step's teacher logits over the global batch

Defaults, their paper values (ImageNet, ResNet-50 / ViT-S, 100-800 epochs) and why they differ here (32 px images,
the small convnet, a 600-step default budget on two CPU cores):

================================ ====================== ======================= =====================================
setting                          default                paper                   why
================================ ====================== ======================= =====================================
``out_dim`` (K)                  1024                   65536                   small data: thousands of images,
                                                                                not a million
``bottleneck_dim``               256                    256
projector (``--head``)           ``mlp``: Linear-BN-    3 layers, GELU, hidden  see "Why batch norm in the head";
                                 ReLU-Linear, hidden    2048, no batch norm     the paper's is the head ``dino``
                                 512                    (``use_bn_in_head``     (3 layers, GELU, hidden 512 for the
                                                        an option)              256-d features of the convnet)
``norm_last_layer``              true                   true
``momentum`` (teacher, base)     0.99                   0.996 (cosine to 1)     600 steps, not 100+ epochs: the
                                                                                teacher must follow faster (BYOL's
                                                                                small-data value)
``centre_momentum``              0.9                    0.9
``student_temperature``          0.1                    0.1
``teacher_temperature``          0.04                   0.04 -> 0.07 (30 ep.)   the paper's stable value; above
                                                                                0.06 it needs the warm-up, and a
                                                                                softer teacher stalls a short run
``warmup_teacher_temperature``   0.04                   0.04
``teacher_temperature_warmup``   180 steps              30 epochs (of 100-800)  30% of the default 600 steps (acts
                                                                                with ``teacher_temperature=0.07``)
``freeze_last_layer``            60 steps               1 epoch
``global_size``                  0: the image's (32)    224 px                  a global view is the whole image size
``local_size``                   0: half the global's   96 px (0.43 of 224)     16 px at 32 px
``local_crops``                  0 (multi-crop off)     10 (6 in cheaper runs)  at 32 px a local view is 16 px of at
                                                                                most 40% of the image: see "Why no
                                                                                local crops by default"
``global_min/max_scale``         0.4 / 1.0              0.4 / 1.0 (ResNet-50)
``local_min/max_scale``          0.05 / 0.4             0.05 / 0.4
``strength`` (colour jitter)     0.5                    brightness, contrast    the shared pipeline's jitter is
                                                        0.4, saturation 0.2,    0.8 s / 0.2 s: 0.4, 0.4, 0.4, 0.1
                                                        hue 0.1, p 0.8
``blur``                         false                  global 1.0 and 0.1,     blur on 32 px images removes what
                                                        local 0.5               little there is (SimCLR: no blur
                                                                                on CIFAR-10)
``solarize_probability``         0.2 (second global)    0.2 (second global)
``representation``               teacher                teacher (evaluated)
================================ ====================== ======================= =====================================

Why batch norm in the head. With the paper's projector (no batch norm, the head ``dino``) the default budget on
the embedded data never leaves DINO's uniform regime: on seed 0 the loss stayed at 6.90 and the teacher's entropy
at 6.88 nats (uniform over 1024 prototypes is 6.93) from step 50 to step 370, whether the teacher temperature
warmed up to 0.07 (momentum 0.996 or 0.99) or stayed at 0.04. The projector maps the small convnet's pooled
features of different images to nearly the same direction, so the centred teacher outputs hardly differ between
images and there is little to distil. Batch norm in the projector (the authors' ``use_bn_in_head`` option, here the
core's ``mlp`` head) spreads them over the batch: with it the loss fell below 6.0 and the teacher's entropy below
5.3 within 130 steps. ``benchmarks/RESULTS.md`` ("DINO (issue 19)") has the linear probes.

Why no local crops by default. Multi-crop is built (``local_crops``, ``local_size`` and the scale ranges are
settings: ``--set dino.local_crops=4`` gives 4 local views of 16 px at 32 px, batched at their own resolution) but
at this engine's 32 px it did not help: on ``shapes`` at the default budget, seed 1, the linear probe was 0.418
with 4 local crops against 0.4895 with none (the random-init backbone: 0.423), and the runs took 554 s and 353 s
(wall times on the shared VM, not a timed comparison; the 4 locals add a global view's worth of pixels). A 16 px
view of 5-40% of a 32 px image holds a few pixels of one part of a shape, too little to predict the whole
image's teacher output from. solo-learn's CIFAR recipe for DINO also trains on the two 32 px crops alone. On
larger images (the paper's 224 px, with 96 px locals) multi-crop is what the paper finds worth its cost: set
``local_crops`` there.

Other departures: the optimiser is the run's (``--optimizer``, default SGD; the paper uses LARS for ResNet-50 and
AdamW for ViTs), with its constant weight decay, not the paper's cosine schedule of weight decay from 0.04 to 0.4,
and no gradient clipping; ``freeze_last_layer`` gives the prototypes a zero gradient rather than none (see
:class:`~sslx_dino.head.DINOHead`). Batch norm in the teacher uses the statistics of the batch it sees (the
teacher runs in training mode, as in the authors' code); ``--sync-bn`` makes them the global batch's.

State and checkpoint layout (all inside the task's modules, so checkpoints keep it and resuming is exact):
``task/dino/head.*`` the student's head (trained by the main optimizer); ``task/dino/teacher.backbone.*`` and
``task/dino/teacher.head.*`` the teacher (frozen: ``requires_grad=False``, left out of the main optimizer, moved
only by :meth:`DINOTask.after_step`); ``task/dino/centre`` the centre ``(1, K)``, a registered buffer. With the default
``representation=teacher``, evaluation and ``sslx export`` use the teacher's backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_dino.head import DINOHead
from sslx_dino.loss import dino_loss, teacher_temperature, updated_centre

GLOBAL_VIEWS = 2
LOCAL_CROPS = 0  # multi-crop off at the default 32 px: see the module's notes
# A 1-pixel local view would be meaningless; the small convnet needs at least 8 px.
MIN_CROP_SIZE = 8


def crop_sizes(settings: Mapping[str, Any], image_size: int) -> tuple[int, int]:
    """The sides of the global and local views: ``global_size`` (0: the image's) and ``local_size`` (0: half the
    global side, at least :data:`MIN_CROP_SIZE`)."""
    global_size = settings["global_size"] or image_size
    local_size = settings["local_size"] or max(MIN_CROP_SIZE, global_size // 2)
    return global_size, local_size


def check_settings(settings: Mapping[str, Any], image_size: int) -> None:
    """Refuse combinations of settings that no single range can: each message names the task and the settings.

    Raises:
        SettingError: local views larger than the global ones (in pixels or in their share of the image), a scale
            range upside down, views below :data:`MIN_CROP_SIZE`.
    """
    global_size, local_size = crop_sizes(settings, image_size)
    problems = [
        f"dino.{kind}_size={size} px is below the {MIN_CROP_SIZE} px a view needs (0 picks the default)"
        for kind, size in (("global", global_size), ("local", local_size))
        if size < MIN_CROP_SIZE
    ]
    if local_size > global_size:
        problems.append(
            f"local views of {local_size} px are larger than the global views of {global_size} px "
            f"(dino.local_size must not exceed dino.global_size, or the image size when that is 0)"
        )
    for kind in ("global", "local"):
        low, high = settings[f"{kind}_min_scale"], settings[f"{kind}_max_scale"]
        if low > high:
            problems.append(f"dino.{kind}_min_scale={low} is above dino.{kind}_max_scale={high}")
    if settings["local_max_scale"] > settings["global_max_scale"]:
        problems.append(
            f"local crops may cover more of the image (dino.local_max_scale={settings['local_max_scale']}) than "
            f"global ones (dino.global_max_scale={settings['global_max_scale']})"
        )
    if problems:
        raise api.SettingError("task 'dino': " + "; ".join(problems))


def teacher_of(modules: nn.ModuleDict) -> tuple[api.Backbone, nn.Module]:
    """The teacher's backbone and head in the task's modules (``modules["teacher"]``)."""
    teacher = cast(nn.ModuleDict, modules["teacher"])
    return cast(api.Backbone, teacher["backbone"]), teacher["head"]


class DINOTask(api.MomentumTeacherTask):
    """Match the teacher's centred, sharpened distribution over ``K`` prototypes on every other view.

    Views: ``2 + local_crops`` per image, in two resolutions: ``inputs`` the global views ``(B * 2, 3, G, G)``
    (rows ``2b`` and ``2b + 1`` for image ``b``), ``crops[0]`` the local ones ``(B * N, 3, L, L)`` (none when
    ``local_crops`` is 0). Targets: ``(B,)`` int64, each image's row in the global batch (the loss pairs views by
    their place; nothing is predicted). Head: :class:`~sslx_dino.head.DINOHead` around the chosen projector
    (``make_head(D, bottleneck_dim)``, by default the core's ``mlp``; the paper's is ``dino``). Loss: its own
    (``--loss`` is refused), term ``dino``. Metric: ``agreement``, how often the student's most probable prototype
    on a view is the teacher's on another (global) view of the image; ``teacher_entropy`` (in nats; ``log K`` is
    uniform, 0 a single prototype) and ``teacher_temperature`` are logged too.
    """

    name = "dino"
    summary = "self-distillation: match a momentum teacher's centred, sharpened outputs across global and local crops"
    paper = (
        "Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin 2021, Emerging Properties in Self-Supervised "
        "Vision Transformers"
    )
    views = GLOBAL_VIEWS + LOCAL_CROPS  # with the default local_crops
    min_image_size = 16
    default_image_size = 32
    default_head = "mlp"
    metric = "agreement"
    loss_choice = api.own_loss_choice  # a cross-entropy between distributions: no registered loss applies
    # The teacher starts as the student (Algorithm 1: gt.params = gs.params) and follows it.
    teachers = {"teacher.backbone": api.SHARED_BACKBONE, "teacher.head": "head"}
    settings = (
        api.TaskSetting("out_dim", int, 1024, "K, outputs (prototypes) of the DINO head (paper: 65536)", minimum=2),
        api.TaskSetting("bottleneck_dim", int, 256, "the head's l2-normalised bottleneck (paper: 256)", minimum=1),
        api.TaskSetting(
            "norm_last_layer", bool, True, "keep the prototypes' norm at 1 (paper: true; false learns a gain)"
        ),
        api.momentum_setting(
            "momentum",
            0.99,
            "teacher momentum at the start, cosine to 1 at the end (paper: 0.996; 0.99 for short runs)",
        ),
        api.TaskSetting(
            "centre_momentum", float, 0.9, "momentum of the teacher's centre (paper: 0.9)", minimum=0, maximum=1
        ),
        api.TaskSetting("student_temperature", float, 0.1, "tau_s (paper: 0.1)", minimum=1e-3, maximum=100.0),
        api.TaskSetting(
            "teacher_temperature", float, 0.04, "tau_t after the warm-up (paper: 0.04-0.07)", minimum=1e-3, maximum=100
        ),
        api.TaskSetting(
            "warmup_teacher_temperature", float, 0.04, "tau_t at step 0 (paper: 0.04)", minimum=1e-3, maximum=100.0
        ),
        api.TaskSetting(
            "teacher_temperature_warmup",
            int,
            180,
            "steps of the linear tau_t warm-up (paper: 30 epochs; 0: none)",
            minimum=0,
        ),
        api.TaskSetting(
            "freeze_last_layer", int, 60, "steps the prototypes stay fixed at the start (paper: 1 epoch)", minimum=0
        ),
        api.TaskSetting("local_crops", int, LOCAL_CROPS, "local views per image (paper: 10)", minimum=0, maximum=64),
        api.TaskSetting(
            "global_size", int, 0, "side of the global views in px (0: the image's; paper: 224)", minimum=0
        ),
        api.TaskSetting(
            "local_size",
            int,
            0,
            "side of the local views in px (0: half the global side; paper: 96)",
            minimum=0,
        ),
        api.TaskSetting(
            "global_min_scale",
            float,
            0.4,
            "smallest global crop, share of the area (paper: 0.4)",
            minimum=0.01,
            maximum=1,
        ),
        api.TaskSetting("global_max_scale", float, 1.0, "largest global crop (paper: 1.0)", minimum=0.01, maximum=1),
        api.TaskSetting("local_min_scale", float, 0.05, "smallest local crop (paper: 0.05)", minimum=0.01, maximum=1),
        api.TaskSetting("local_max_scale", float, 0.4, "largest local crop (paper: 0.4)", minimum=0.01, maximum=1),
        *api.view_settings(
            jitter=False,
            min_scale=None,
            blur_modes=False,
            blur_help="blur global views with chance 1 and 0.1, local ones 0.5 (paper: ImageNet)",
            solarize_help="chance the second global view is solarized (paper: 0.2)",
            solarize_name="solarize_probability",
        ),
        api.TaskSetting(
            "representation",
            str,
            "teacher",
            "backbone used downstream (paper: the teacher)",
            choices=("teacher", "student"),
        ),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        config = self.hparams
        check_settings(config, context.image_size)
        self.global_size, self.local_size = crop_sizes(config, context.image_size)
        self.local_crops: int = config["local_crops"]
        self.views = GLOBAL_VIEWS + self.local_crops
        blur = config["blur"]
        self.global_views = api.ViewAugmentation(
            strength=config["strength"],
            min_scale=config["global_min_scale"],
            max_scale=config["global_max_scale"],
            views=GLOBAL_VIEWS,
            size=self.global_size,
            blur_probabilities=(1.0, 0.1) if blur else None,
            solarize_probabilities=(0.0, config["solarize_probability"]),
        )
        self.local_views = api.ViewAugmentation(
            strength=config["strength"],
            min_scale=config["local_min_scale"],
            max_scale=config["local_max_scale"],
            views=max(self.local_crops, 1),
            size=self.local_size,
            blur_probabilities=(0.5,) * max(self.local_crops, 1) if blur else None,
        )

    # --- modules -------------------------------------------------------------------------------------------------
    def make_head(self) -> DINOHead:
        config = self.hparams
        projector = self.context.make_head(self.context.feature_dim, config["bottleneck_dim"])
        return DINOHead(projector, config["bottleneck_dim"], config["out_dim"], config["norm_last_layer"])

    def build_modules(self) -> nn.ModuleDict:
        """The student's head (trained), the frozen teacher (backbone and head) and the centre buffer."""
        teacher = nn.ModuleDict({"backbone": self.context.make_backbone(3), "head": self.make_head()})
        modules = nn.ModuleDict({"head": self.make_head(), "teacher": api.freeze(teacher)})
        modules.register_buffer("centre", torch.zeros(1, self.hparams["out_dim"]))
        return modules

    # --- one step ------------------------------------------------------------------------------------------------
    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Two global views and ``local_crops`` local views of every image, batched per resolution.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness; globals and locals draw from their own streams.

        Returns:
            inputs ``(B * 2, 3, G, G)`` and crops ``((B * N, 3, L, L),)`` normalised, sample-major; targets ``(B,)``
            the images' rows in the global batch; views ``2 + N``; extras the drawn parameters
            (:meth:`ViewAugmentation.draw`) as ``global_<name>`` ``(B, 2, ...)`` and ``local_<name>`` ``(B, N, ...)``.
        """
        # Sampling weights and colour arithmetic stay in float32 even inside the trainer's bfloat16 autocast.
        with torch.autocast(images.device.type, enabled=False):
            source = images.float()
            globals_, drawn = self.global_views(source, random.split("global"))  # (B*2, 3, G, G)
            extras = {f"global_{key}": value for key, value in drawn.items()}
            crops: tuple[torch.Tensor, ...] = ()
            if self.local_crops:
                locals_, drawn = self.local_views(source, random.split("local"))  # (B*N, 3, L, L)
                extras |= {f"local_{key}": value for key, value in drawn.items()}
                crops = (api.normalize(locals_),)
        targets = random.offset + torch.arange(len(images), device=images.device)
        return api.PretextBatch(
            api.normalize(globals_), targets, views=GLOBAL_VIEWS + self.local_crops, extras=extras, crops=crops
        )

    def teacher_temperature(self) -> float:
        """``tau_t`` at the clock's step (warm-up from ``warmup_teacher_temperature`` to ``teacher_temperature``)."""
        config = self.hparams
        return teacher_temperature(
            self.context.clock.step,
            config["warmup_teacher_temperature"],
            config["teacher_temperature"],
            config["teacher_temperature_warmup"],
        )

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Student logits on every view, teacher logits on the global views, and the DINO loss.

        Args:
            backbone: the shared backbone (the student's).
            modules: from :meth:`build_modules`.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``dino`` loss; metrics ``agreement``, ``teacher_entropy``, ``teacher_temperature``; predictions the
            student's logits ``(B * (2 + N), K)`` sample-major, globals first within each image; extras
            ``teacher``, the teacher's logits ``(B * 2, K)`` (the centre follows them in :meth:`after_step`).
        """
        count = len(batch.targets)
        frozen = self.context.clock.step < self.hparams["freeze_last_layer"]
        head, prototypes = modules["head"], self.hparams["out_dim"]
        # One backbone call per resolution (globals, then locals), as the authors' MultiCropWrapper does.
        student = torch.cat(
            [head(backbone.pooled(views), frozen).view(count, -1, prototypes) for views in batch.resolutions()], dim=1
        )  # (B, 2+N, K)
        teacher_backbone, teacher_head = teacher_of(modules)
        with torch.no_grad():
            teacher = teacher_head(teacher_backbone.pooled(batch.inputs))  # (B*2, K)
        temperature = self.teacher_temperature()
        loss, targets = dino_loss(
            student,
            teacher.view(count, GLOBAL_VIEWS, -1),
            modules.get_buffer("centre"),
            self.hparams["student_temperature"],
            temperature,
        )
        chosen = student.detach().argmax(-1)  # (B, V)
        wanted = targets.argmax(-1)  # (B, 2)
        different = ~torch.eye(GLOBAL_VIEWS, chosen.shape[1], dtype=torch.bool, device=chosen.device)
        agreement = (wanted[:, :, None] == chosen[:, None, :])[:, different].float().mean()
        entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
        metrics = {
            "agreement": agreement,
            "teacher_entropy": entropy.detach(),
            "teacher_temperature": torch.tensor(temperature, device=loss.device),
        }
        return api.TaskOutput(
            {"dino": loss}, metrics, student.detach().flatten(0, 1), extras={"teacher": teacher.detach()}
        )

    def momentum(self) -> float:
        """The teacher's momentum at the clock's step: from ``momentum`` to 1 on a cosine (Sec. 3.1)."""
        return api.cosine_momentum(self.hparams["momentum"], self.context.clock.progress)

    def update_buffers(self, modules: nn.ModuleDict, output: api.TaskOutput) -> None:
        """After the teacher moved, the centre follows the step's teacher outputs (Eq. 4)."""
        centre = modules.get_buffer("centre")
        centre.copy_(updated_centre(centre, output.extras["teacher"], self.hparams["centre_momentum"]))

    def representation(self, backbone: api.Backbone, modules: nn.ModuleDict) -> api.Representation:
        """The teacher's backbone (the paper evaluates the teacher), or the student's with
        ``representation=student``; both on normalised RGB."""
        if self.hparams["representation"] == "teacher":
            return api.Representation(teacher_of(modules)[0])
        return api.Representation(backbone)

    # --- pictures ------------------------------------------------------------------------------------------------
    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each original, its global views and its local views, every picture at its own size
        (all magnified by the same factor), with the student's top prototype per view after a run."""
        count = len(images)
        scale = max(1, 64 // max(self.global_size, images.shape[-1]))
        groups = [(images, 1, "image")]
        groups += [(api.denormalize(views).clamp(0, 1), len(views) // count, kind)
                   for views, kind in zip(batch.resolutions(), ("global", "local"), strict=False)]  # fmt: skip
        columns = [(tensor, row_views, kind, v) for tensor, row_views, kind in groups for v in range(row_views)]
        predictions = None
        if output is not None and output.predictions is not None:
            predictions = output.predictions.detach().argmax(dim=1).cpu()
        rows = []
        for row in range(count):
            cells, view = [], 0
            for tensor, row_views, kind, v in columns:
                picture = tensor[row * row_views + v].detach().float().cpu().clamp(0, 1)
                side = picture.shape[-1] * scale
                array = (picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                shown = Image.fromarray(array).resize((side, side), Image.Resampling.NEAREST)
                label = ""
                if kind != "image":
                    if predictions is not None:
                        label = f"prototype {int(predictions[row * batch.views + view])}"
                    view += 1
                cells.append(api.PictureCell(shown, label))
            rows.append(cells)
        header = [kind if kind == "image" else f"{kind} {v + 1}" for _, _, kind, v in columns]
        locals_ = (
            f"{self.local_crops} local views of {self.local_size} px (student only)"
            if self.local_crops
            else "no local views (--set dino.local_crops=N adds them)"
        )
        title = f"dino: {GLOBAL_VIEWS} global views of {self.global_size} px (teacher and student), {locals_}"
        caption = (
            "Each view is a random crop (globals large, locals small) with colour jitter, sometimes grey, blurred or "
            "solarised. The student matches, on every view, the teacher's centred, sharpened distribution over "
            "the prototypes on the other global views; after a run, each view's top prototype is under it."
        )
        return api.picture_sheet(rows, title, header=header, caption=caption)
