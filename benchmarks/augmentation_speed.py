"""How fast is SimCLR's batched augmentation? The plugin's choice against the alternatives, on the same draws.

Two measurements on float images ``(B, 3, S, S)``, every method given the same externally drawn parameters:

* crop stage (random resized crop + flip, 2 views per image):
  - ``grid_sample``: the plugin's :func:`ssl_engine.views.crop.resized_crop`, one ``F.grid_sample`` on a sampling grid
    per view;
  - ``matmul``: two batched products with bilinear interpolation matrices (same output);
  - ``roi_align``: ``torchvision.ops.roi_align`` (aligned, one sample per bin; reads half a pixel outside the box);
  - ``kornia``: ``kornia.geometry.transform.crop_and_resize`` (a perspective warp per box), if kornia is installed;
  - ``torchvision loop``: ``torchvision.transforms.v2.functional.resized_crop`` + flip, one view at a time.
* colour jitter in a random order per view: the plugin's rounds over the views scheduled for each adjustment
  (:func:`ssl_engine.views.color.color_jitter`) against every adjustment on every view each round, then a select;
* whole pipeline (crop, flip, colour jitter in random order with p 0.8, grayscale with p 0.2):
  - ``plugin``: :class:`ssl_engine.views.pipeline.ViewAugmentation` (drawing included);
  - ``kornia``: ``kornia.enhance``'s functions with per-view factor tensors (fixed order, as kornia's own jitter
    has one order per batch);
  - ``torchvision loop``: per view, the ``torchvision.transforms.v2.functional`` calls in that view's order.

Calls are interleaved (method A, B, C, A, B, C, ...) and repeated so that load from other processes falls on all
methods alike; the script prints each method's median and its ratio to the plugin's.

Usage::

    python benchmarks/augmentation_speed.py [--batch 64] [--size 32] [--repeats 30] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from ssl_engine.randomness import BatchRandom
from ssl_engine.views.color import ADJUSTMENTS, HUE, color_jitter
from ssl_engine.views.crop import resized_crop
from ssl_engine.views.pipeline import ViewAugmentation

try:
    import kornia
except ImportError:  # kornia is optional: measured when installed
    kornia = None

TORCHVISION_ADJUSTMENTS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def crop_matmul(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """The same crops as two batched products ``Ry @ image @ Rx^T`` with bilinear interpolation matrices."""
    batch, views = boxes.shape[:2]
    height, width = images.shape[-2:]
    flat = boxes.flatten(0, 1)

    def matrix(start: torch.Tensor, length: torch.Tensor, extent: int) -> torch.Tensor:
        samples = torch.arange(size, device=images.device, dtype=torch.float32) + 0.5
        position = (samples * (length[:, None] / size) - 0.5).clamp(min=0)
        lower = position.floor()
        weight_upper = position - lower
        lower = lower.long()
        upper = torch.minimum(lower + 1, length[:, None] - 1)
        weights = torch.zeros(len(start), size, extent, device=images.device)
        weights.scatter_add_(2, (start[:, None] + lower)[..., None], (1 - weight_upper)[..., None])
        weights.scatter_add_(2, (start[:, None] + upper)[..., None], weight_upper[..., None])
        return weights  # (N, size, extent), two non-zeros a row

    rows = matrix(flat[:, 0], flat[:, 2], height).view(batch, views, 1, size, height)
    columns = matrix(flat[:, 1], flat[:, 3], width).view(batch, views, size, width)
    columns = torch.where(flips[..., None, None], columns.flip(2), columns)[:, :, None]
    return rows @ images[:, None] @ columns.transpose(-1, -2)  # (B, V, C, S, S)


def crop_roi_align(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    batch, views = boxes.shape[:2]
    flat = boxes.flatten(0, 1).float()
    index = torch.arange(batch, device=images.device).repeat_interleave(views).float()
    rois = torch.stack([index, flat[:, 1], flat[:, 0], flat[:, 1] + flat[:, 3], flat[:, 0] + flat[:, 2]], dim=1)
    crops = roi_align(images, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return torch.where(flips.flatten().view(-1, 1, 1, 1), crops.flip(-1), crops)


def crop_kornia(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    batch, views = boxes.shape[:2]
    flat = boxes.flatten(0, 1).float()
    top, left, bottom, right = flat[:, 0], flat[:, 1], flat[:, 0] + flat[:, 2] - 1, flat[:, 1] + flat[:, 3] - 1
    corners = torch.stack(
        [torch.stack([left, top], 1), torch.stack([right, top], 1), torch.stack([right, bottom], 1),
         torch.stack([left, bottom], 1)], dim=1,
    )  # fmt: skip
    crops = kornia.geometry.transform.crop_and_resize(images.repeat_interleave(views, dim=0), corners, (size, size))
    return torch.where(flips.flatten().view(-1, 1, 1, 1), crops.flip(-1), crops)


def crop_torchvision_loop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    out = []
    for b in range(boxes.shape[0]):
        for v in range(boxes.shape[1]):
            top, left, height, width = boxes[b, v].tolist()
            crop = TF.resized_crop(images[b], top, left, height, width, [size, size], antialias=True)
            out.append(TF.horizontal_flip(crop) if flips[b, v] else crop)
    return torch.stack(out)


def pipeline_torchvision_loop(images: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
    size = images.shape[-1]
    views = crop_torchvision_loop(images, drawn["boxes"], drawn["flips"], size)
    factors, order = drawn["jitter"].flatten(0, 1), drawn["jitter_order"].flatten(0, 1).tolist()
    jittered, gray = drawn["jittered"].flatten().tolist(), drawn["gray"].flatten().tolist()
    out = []
    for n, view in enumerate(views):
        if jittered[n]:
            for operation in order[n]:
                view = TORCHVISION_ADJUSTMENTS[operation](view, float(factors[n, operation]))
        if gray[n]:
            view = TF.rgb_to_grayscale(view, num_output_channels=3)
        out.append(view)
    return torch.stack(out)


def pipeline_kornia(images: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
    views = crop_kornia(images, drawn["boxes"], drawn["flips"], images.shape[-1]).clamp(0, 1)
    factors = drawn["jitter"].flatten(0, 1)
    jittered = drawn["jittered"].flatten().view(-1, 1, 1, 1)
    out = kornia.enhance.adjust_brightness_accumulative(views, factors[:, 0])
    out = kornia.enhance.adjust_contrast_with_mean_subtraction(out, factors[:, 1])
    out = kornia.enhance.adjust_saturation(out, factors[:, 2])
    out = kornia.enhance.adjust_hue(out, factors[:, HUE] * 2 * torch.pi)  # kornia's hue is in radians
    out = torch.where(jittered, out, views)
    gray = kornia.color.rgb_to_grayscale(out).expand_as(out)
    return torch.where(drawn["gray"].flatten().view(-1, 1, 1, 1), gray, out)


def jitter_everything_where(
    images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor
) -> torch.Tensor:
    """The alternative to the plugin's per-round subsets: every adjustment on every view each round, then select."""
    for position in range(4):
        for operation, adjust in enumerate(ADJUSTMENTS):
            chosen = (apply & (order[:, position] == operation)).view(-1, 1, 1, 1)
            images = torch.where(chosen, adjust(images, factors[:, operation]), images)
    return images


def measure(methods: dict[str, Callable[[], torch.Tensor]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each method, calls interleaved across methods."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for method in methods.values():  # warm-up
        method()
    for _ in range(repeats):
        for name, method in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            method()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], baseline: str, count: int) -> None:
    print(f"\n{title}")
    print(f"{'method':<18} {'median ms':>10} {'views/s':>10} {'x plugin':>9}")
    for name, seconds in medians.items():
        print(f"{name:<18} {1e3 * seconds:>10.2f} {count / seconds:>10.0f} {seconds / medians[baseline]:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    augmentation = ViewAugmentation()
    random = BatchRandom(0, 0, "simclr", args.batch, device=device)
    drawn = augmentation.draw(random, args.size, args.size)
    boxes, flips = drawn["boxes"], drawn["flips"]
    views = args.batch * augmentation.views
    print(f"{args.batch} images x {augmentation.views} views, {args.size} px, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")  # fmt: skip

    reference = crop_torchvision_loop(images, boxes, flips, args.size)
    crops: dict[str, Callable[[], torch.Tensor]] = {
        "grid_sample (plugin)": lambda: resized_crop(images, boxes, flips, args.size),
        "matmul": lambda: crop_matmul(images, boxes, flips, args.size),
        "roi_align": lambda: crop_roi_align(images, boxes, flips, args.size),
    }
    if kornia is not None:
        crops["kornia"] = lambda: crop_kornia(images, boxes, flips, args.size)
    crops["torchvision loop"] = lambda: crop_torchvision_loop(images, boxes, flips, args.size)
    for name, method in crops.items():
        difference = float((method().reshape(reference.shape) - reference).abs().max())
        print(f"  {name}: largest difference from torchvision's resized_crop {difference:.2e}")
    report("crop + flip", measure(crops, args.repeats, device), "grid_sample (plugin)", views)

    crops_flat = resized_crop(images, boxes, flips, args.size).flatten(0, 1).clamp(0, 1)
    jitter_args = (drawn["jitter"].flatten(0, 1), drawn["jitter_order"].flatten(0, 1), drawn["jittered"].flatten())
    jitters: dict[str, Callable[[], torch.Tensor]] = {
        "subsets (plugin)": lambda: color_jitter(crops_flat, *jitter_args),
        "all + where": lambda: jitter_everything_where(crops_flat, *jitter_args),
    }
    difference = float((jitters["subsets (plugin)"]() - jitters["all + where"]()).abs().max())
    print(f"\n  random-order jitter, subsets vs all + where: largest difference {difference:.2e}")
    report("colour jitter in random order per view", measure(jitters, args.repeats, device), "subsets (plugin)", views)

    pipelines: dict[str, Callable[[], torch.Tensor]] = {
        "plugin": lambda: augmentation(images, random)[0],
    }
    if kornia is not None:
        pipelines["kornia"] = lambda: pipeline_kornia(images, drawn)
    pipelines["torchvision loop"] = lambda: pipeline_torchvision_loop(images, drawn)
    mine = augmentation.apply(images, drawn)
    loop = pipeline_torchvision_loop(images, drawn)
    print(f"\n  plugin vs torchvision loop: largest difference {float((mine - loop).abs().max()):.2e}")
    report("whole augmentation (crop, flip, jitter, gray)", measure(pipelines, args.repeats, device), "plugin", views)


if __name__ == "__main__":
    main()
