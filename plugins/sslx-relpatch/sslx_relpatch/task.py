"""Relative patch position (context prediction): Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation
Learning by Context Prediction" (ICCV).

From each image a centre patch and one of its 8 neighbours in a 3x3 grid are cut (:mod:`sslx_relpatch.patches`);
the network says which of the 8 positions the neighbour came from. Both patches go through the shared backbone
on their own (two towers, shared weights: the paper's late fusion, so most of the reasoning has to happen per
patch), their pooled features are concatenated, ``(B, 2 * D)``, and a classifier head names the position.

The paper's guards against trivial shortcuts are settings, with the paper's behaviour as default: a gap between
the patches and a random jitter of each (no continuing lines or textures), some patches downsampled and
upsampled back (no matching by sharpness), and colour dropping (no chromatic aberration).

Each patch is normalised on its own as in the authors' code (``normalization="patch"``): its channel means are
removed and the whole patch is scaled to unit root mean square, one scale for all channels, so a dropped channel's
noise stays at 1/100 of the kept channel; the representation feeds downstream images normalised the same way. On the
embedded data (before its parts had usual colours), at the default budget, this learned the pretext task better than
the fixed dataset normalisation (``normalization="dataset"``; accuracy about 0.25 against 0.15), and the linear
probe beat random initialisation's only once the representation's input matched the training patches (see the
plugin's README for the figures).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_relpatch.patches import (
    MIN_PATCH,
    NEIGHBOUR_STEPS,
    NEIGHBOURS,
    PAPER_DOWNSAMPLE_FRACTION,
    PAPER_DOWNSAMPLE_PROBABILITY,
    PAPER_GAP_FRACTION,
    PAPER_JITTER_FRACTION,
    PAPER_NOISE_FRACTION,
    PatchGrid,
    choose_dropped,
    crop_patches,
    downsample_sides,
    drop_colors,
    resample,
    resampling_table,
    smallest_image_size,
)

PAIR = 2  # views per image: the centre patch, then the neighbour
SHOWN = 96  # px the image and each patch are drawn at by `sslx show`
POSITIONS = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
CHANNELS = 3
DROP_COUNTS = {"two": (2, 2), "one": (1, 1), "one_or_two": (1, 2)}  # channels dropped per patch: (fewest, most)


def position_label(target: int) -> str:
    """Where neighbour class ``target`` lies around the centre, in words: ``"top-left"``."""
    return POSITIONS[target]


def centre_channels(images: torch.Tensor) -> torch.Tensor:
    """Subtract each channel's mean over the pixels, per image or patch: ``(..., C, h, w)``."""
    return images - images.mean(dim=(-2, -1), keepdim=True)


def unit_rms(images: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Divide each image or patch ``(..., C, h, w)`` by its root mean square over channels and pixels.

    After :func:`centre_channels` this is the authors' per-patch preprocessing (``deepcontext``'s ``prep_image``,
    "so that gradients are a less useful cue"): one scale for all channels, so the 1/100 noise of a dropped
    channel stays small next to the kept one (``standardize_each`` would blow it up to unit variance).
    """
    return images / (images.square().mean(dim=(-3, -2, -1), keepdim=True).sqrt() + eps)


def normalize_each(images: torch.Tensor) -> torch.Tensor:
    """The ``patch`` normalisation applied to whole images ``(B, 3, H, W)`` in [0, 1]: the representation's input.

    The backbone is trained on patches normalised this way, so downstream it is fed images normalised the same
    way, not with the fixed dataset statistics it has never seen.
    """
    return unit_rms(centre_channels(images))


class RelativePatchTask(api.PretextTask):
    """Predict which of the 8 neighbours of a centre patch a second patch is.

    Views: 2 per image, rows ``2b`` (centre) and ``2b + 1`` (neighbour) of the inputs, each ``(3, p, p)``.
    Targets ``(B,)`` in 0..7, the neighbour numbered row-major around the centre (0 top left, 1 above, 2 top
    right, 3 left, 4 right, 5 bottom left, 6 below, 7 bottom right; see
    :data:`sslx_relpatch.patches.NEIGHBOUR_STEPS`). Head on the two pooled features concatenated, centre first,
    ``(B, 2 * D)`` -> 8 logits; cross-entropy term ``position``; pretext metric accuracy.

    The default head is ``mlp`` (Linear-BN-ReLU-Linear): the paper fuses the two towers' fc6 features in two
    fully connected layers (fc7, fc8) before the 8-way output, and a linear head could only add up evidence from
    each patch separately, never relate the two (e.g. "the roof is in the centre patch *and* the neighbour shows
    sky" means "above"), which is the point of the task. ``--head relpatch=linear`` is there for comparison.

    ``min_image_size`` is 31 px: 7 px patches (the smallest allowed, :data:`~sslx_relpatch.patches.MIN_PATCH`)
    with the paper's 4 px gap and 1 px jitter; a larger gap or jitter needs larger images, which the constructor
    checks.
    """

    name = "relpatch"
    summary = "predict which of the 8 neighbours of a centre patch a second patch came from"
    paper = "Doersch, Gupta & Efros 2015, Unsupervised Visual Representation Learning by Context Prediction"
    views = PAIR
    min_image_size = smallest_image_size()
    default_image_size = 64
    default_head = "mlp"
    settings = (
        api.TaskSetting(
            "gap",
            float,
            PAPER_GAP_FRACTION,
            "gap between neighbouring grid slots / patch side, against continuing edges (paper: 48/96)",
            minimum=0.0,
            maximum=2.0,
        ),
        api.TaskSetting(
            "jitter",
            float,
            PAPER_JITTER_FRACTION,
            "largest random shift of each patch per axis / patch side, so lines don't line up (paper: 7/96)",
            minimum=0.0,
            maximum=0.5,
        ),
        api.TaskSetting(
            "downsample_probability",
            float,
            PAPER_DOWNSAMPLE_PROBABILITY,
            "share of patches downsampled and upsampled back (paper: 'some'; the authors' code: 0.33)",
            minimum=0.0,
            maximum=1.0,
        ),
        api.TaskSetting(
            "downsample_min",
            float,
            PAPER_DOWNSAMPLE_FRACTION,
            "smallest side a downsampled patch is reduced to / patch side (paper: 100 pixels of 96x96, 10/96)",
            minimum=0.0,
            maximum=1.0,
        ),
        api.TaskSetting(
            "color_drop_probability",
            float,
            1.0,
            "share of patches whose colour channels are dropped, against chromatic aberration (paper: all)",
            minimum=0.0,
            maximum=1.0,
        ),
        api.TaskSetting(
            "color_drop_channels",
            str,
            "two",
            "channels dropped from such a patch (paper: two of the three, keeping one)",
            choices=tuple(DROP_COUNTS),
        ),
        api.TaskSetting(
            "color_drop_noise",
            float,
            PAPER_NOISE_FRACTION,
            "std of the Gaussian noise replacing a dropped channel / std of the kept channels (paper: 1/100)",
            minimum=0.0,
            maximum=10.0,
        ),
        api.TaskSetting(
            "normalization",
            str,
            "patch",
            "patch: each patch's channel means removed, the patch scaled to unit RMS (the authors' code); "
            "dataset: the fixed mean/std of every sslx input",
            choices=("patch", "dataset"),
        ),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        self.grid = self._grid_for(context.image_size)
        self._tables: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._steps: dict[torch.device, torch.Tensor] = {}

    # --- geometry ----------------------------------------------------------------------------------------------
    def _grid_for(self, image_size: int) -> PatchGrid:
        grid = PatchGrid.for_images(image_size, self.hparams["gap"], self.hparams["jitter"])
        if grid.patch < MIN_PATCH or grid.slack < 0:
            minimum = smallest_image_size(self.hparams["gap"], self.hparams["jitter"])
            raise api.ImageSizeError(
                f"task {self.name!r} needs images of at least {minimum} px with gap={self.hparams['gap']:.4g} and "
                f"jitter={self.hparams['jitter']:.4g} (a 3x3 grid of patches of {MIN_PATCH} px or more); got "
                f"{image_size} px (raise --image-size, or lower relpatch.gap / relpatch.jitter)"
            )
        return grid

    def _table_on(self, patch: int, device: torch.device) -> torch.Tensor:
        """The down-up resampling matrices of ``patch`` px patches on ``device`` (built once)."""
        key = (patch, device)
        if key not in self._tables:
            self._tables[key] = resampling_table(patch, device)
        return self._tables[key]

    def _steps_on(self, device: torch.device) -> torch.Tensor:
        """:data:`NEIGHBOUR_STEPS` on ``device``, ``(8, 2)`` int64."""
        if device not in self._steps:
            self._steps[device] = torch.tensor(NEIGHBOUR_STEPS, dtype=torch.long, device=device)
        return self._steps[device]

    # --- the contract ------------------------------------------------------------------------------------------
    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"head": self.context.make_head(PAIR * self.context.feature_dim, NEIGHBOURS)})

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Cut, degrade and normalise the centre/neighbour pair of every image of the batch.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness (every number is drawn whatever the settings, in a fixed order).

        Returns:
            inputs ``(B * 2, 3, p, p)`` (centre then neighbour of each image), targets ``(B,)`` in 0..7, views
            2, and extras (per image, index 0 the centre patch, 1 the neighbour): ``positions`` ``(B, 2, 2)``
            top-left (row, column) of each patch in the image, ``jitter`` ``(B, 2, 2)`` each patch's shift from
            its grid slot, ``origin`` ``(B, 2)`` the grid's placement, ``downsampled`` ``(B, 2)`` bool,
            ``sides`` ``(B, 2)`` the side each patch was downsampled to (``p`` if it was not), ``dropped``
            ``(B, 2, 3)`` bool, the colour channels replaced by noise.
        """
        grid = self.grid if images.shape[-1] == self.grid.image_size else self._grid_for(images.shape[-1])
        device, patch = images.device, grid.patch
        config = self.hparams

        # Where: a random grid placement, a random neighbour, a random shift of each patch.
        targets = random.randint(0, NEIGHBOURS)  # (B,)
        origin = random.randint(0, grid.slack + 1, 2)  # (B, 2)
        jitter = random.randint(-grid.jitter, grid.jitter + 1, PAIR, 2)  # (B, 2, 2)
        centre = torch.ones_like(origin)  # slot (1, 1)
        slots = torch.stack([centre, centre + self._steps_on(device)[targets]], dim=1)  # (B, 2, 2)
        positions = origin[:, None, :] + grid.jitter + slots * grid.pitch + jitter  # (B, 2, 2)
        patches = crop_patches(images, positions, patch)  # (B, 2, 3, p, p) in [0, 1]

        # Downsampling then upsampling some patches.
        downsampled = random.bernoulli(config["downsample_probability"], PAIR)  # (B, 2)
        drawn_sides = downsample_sides(random.rand(PAIR), patch, config["downsample_min"])  # (B, 2)
        sides = torch.where(downsampled, drawn_sides, torch.full_like(drawn_sides, patch))
        patches = resample(patches.flatten(0, 1), sides.flatten(), self._table_on(patch, device)).view_as(patches)

        # Normalisation, then colour dropping.
        fewest, most = DROP_COUNTS[config["color_drop_channels"]]
        counts = random.randint(fewest, most + 1, PAIR)  # (B, 2)
        scores = random.rand(PAIR, CHANNELS)  # (B, 2, 3)
        dropping = random.bernoulli(config["color_drop_probability"], PAIR)  # (B, 2)
        noise = random.randn(PAIR, CHANNELS, patch, patch)  # (B, 2, 3, p, p)
        dropped = choose_dropped(scores, counts) & dropping[..., None]  # (B, 2, 3)
        if config["normalization"] == "patch":
            patches = unit_rms(drop_colors(centre_channels(patches), dropped, noise, config["color_drop_noise"]))
        else:
            patches = api.normalize(patches.flatten(0, 1)).view_as(patches)
            patches = drop_colors(patches, dropped, noise, config["color_drop_noise"])

        extras = {
            "positions": positions,
            "jitter": jitter,
            "origin": origin,
            "downsampled": downsampled,
            "sides": sides,
            "dropped": dropped,
        }
        return api.PretextBatch(patches.flatten(0, 1), targets, views=PAIR, extras=extras)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Two towers with shared weights: each patch alone through the backbone, the head on the pair.

        Args:
            backbone: the shared backbone.
            modules: ``{"head": (B, 2 * D) -> (B, 8)}``.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``position`` cross-entropy, ``accuracy`` and the logits ``(B, 8)``.
        """
        features = backbone.pooled(batch.inputs)  # (B*2, D): the patches never see each other in the backbone
        pairs = features.reshape(-1, PAIR * features.shape[1])  # (B, 2*D): centre features, then neighbour's
        logits = modules["head"](pairs)  # (B, 8)
        loss = self.context.loss_fn(logits.float(), batch.targets)
        return api.TaskOutput({"position": loss}, {"accuracy": api.accuracy(logits, batch.targets)}, logits)

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each original with the centre patch outlined in blue and the neighbour in green (as
        the paper's Figure 2) and the neighbour's position in words, then the two patches as the network sees
        them, each noting its guards (the colour channel kept, a downsampling); after a run, the position the
        model named, crossed out in red when wrong."""
        marked = images.clone()
        side = batch.inputs.shape[-1]
        for index, colour in enumerate(((0.1, 0.3, 1.0), (0.1, 0.8, 0.1))):
            paint = torch.tensor(colour, device=images.device)[:, None]
            for sample, (top, left) in enumerate(batch.extras["positions"][:, index].tolist()):  # a few pictures
                bottom, right = top + side - 1, left + side - 1
                for row in (top, bottom):
                    marked[sample, :, row, left : right + 1] = paint
                for column in (left, right):
                    marked[sample, :, top : bottom + 1, column] = paint
        dropped, sides = batch.extras["dropped"].cpu(), batch.extras["sides"].cpu()

        def guards(sample: int, view: int) -> str:
            notes = []
            if bool(dropped[sample, view].any()):
                kept = "".join(
                    name for name, gone in zip("RGB", dropped[sample, view].tolist(), strict=True) if not gone
                )
                notes.append(f"only {kept} kept" if kept else "all dropped")
            if int(sides[sample, view]) != side:
                notes.append(f"blurred (from {int(sides[sample, view])} px)")
            return "\n".join(notes)

        predictions = output.predictions if output is not None else None
        normalised = (
            "Each patch is normalised on its own (channel means removed, scaled to unit RMS), so colours shift. "
            if self.hparams["normalization"] == "patch"
            else ""
        )
        caption = (
            f"{normalised}Colour dropping: only the channel named under a patch is kept, the others are replaced "
            f"by faint noise, so patches cannot be matched by colour fringes; some patches are downsampled and "
            f"upsampled (blurred), so sharpness gives nothing away. The gap and jitter between the patches keep "
            f"edges from running on."
        )
        return api.default_drawing(
            marked,
            batch,
            predictions,
            f"{self.name}: {self.summary}",
            labels=position_label,
            header=["where the neighbour (green) is from the centre (blue)", "centre", "neighbour"],
            caption=caption,
            notes=guards,
            size=SHOWN,
        )

    def representation(self, backbone: api.Backbone, modules: nn.ModuleDict) -> api.Representation:
        """The backbone on RGB images normalised as the training patches were.

        With ``normalization="patch"`` (the default) each image's channel means are removed and the image is
        scaled to unit RMS (:func:`normalize_each`), as every training patch was; with ``"dataset"``, the fixed
        normalisation. Feeding the fixed normalisation to a backbone trained on per-patch normalised inputs put
        its linear probe at or below random initialisation's; matching the training inputs puts it far above
        (see the plugin's README).
        """
        if self.hparams["normalization"] == "patch":
            return api.Representation(backbone, normalize_each)
        return api.Representation(backbone)
