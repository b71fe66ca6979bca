"""Decoding file-backed training images on the training device (``--decode device``; ``auto`` on CUDA).

The two ways a training batch of a folder or of shards is made; both give uint8 ``(B, 3, S, S)`` and the same crop
boxes, drawn by :func:`~ssl_engine.data.crops.random_resized_box` from the image's header size and (seed, step,
place in the global batch)::

    --decode workers (the default off CUDA)          --decode device (the default on CUDA)
      worker: read the file, decode it with PIL        worker: read the file's bytes and its header size (no
              (a JPEG at the smallest DCT scale the            decoding), draw the box
              crop allows), crop + resize to S x S     main process: decode the batch's JPEGs in one call of
      main process: copy the batch to the device               torchvision's decode_jpeg (nvJPEG on CUDA), crop
                                                               + resize each there (device_resize.py)

Only JPEGs that PIL reads as RGB or grayscale and that end with their end-of-image marker go to the device;
everything else (PNG and other formats, CMYK JPEGs, JPEGs cut short or with bytes after the marker) is decoded in
the worker exactly as ``--decode workers`` does. Unreadable files keep that path's contract: a file whose header
can't be read, or that fails to decode in the worker, is replaced there by the same deterministic chain of
:func:`~ssl_engine.data.file_backed.replacements`; a JPEG that ``decode_jpeg`` refuses is handed to PIL in the main
process, which decodes it or continues the chain where the worker stopped. So the replacements, the
``data/unreadable`` count and the names reported are those of the worker path; the one difference is a damaged JPEG
that ``decode_jpeg`` decodes and PIL refuses, which is kept.

The crop and resize repeat the worker path's (:mod:`ssl_engine.data.device_resize`): the pixels agree to within a
level where PIL decodes the JPEG whole, to within a couple of levels where it decodes a reduced DCT scale
(``tests/test_device_decode.py`` states the tolerances; nvJPEG's decoding adds its own small differences on CUDA).
On a CPU this path is slower than the workers (one process decodes, and the resize is written for a GPU): it is
there for tests. ``benchmarks/data_path.py throughput`` times both paths.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import IO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_engine.config import DECODE_PLACES
from ssl_engine.data.batches import BatchStream, KeyedSteps
from ssl_engine.data.crops import crop_random, crop_to_tensor, random_resized_box
from ssl_engine.data.decode import DECODE_ERRORS, open_image
from ssl_engine.data.device_resize import Crop, draft_scale, resize_crops
from ssl_engine.data.file_backed import FileBackedImages, replacements
from ssl_engine.data.options import DataError

# JPEGs as PIL names them (MPO: a camera's multi-picture JPEG; decode_jpeg reads its first picture, as PIL does).
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# PIL modes of JPEGs that decode_jpeg turns into PIL's RGB (CMYK ones are left to PIL's own conversion).
DEVICE_MODES = frozenset({"RGB", "L"})
END_OF_IMAGE = b"\xff\xd9"
# Full-size pixels one decode_jpeg call holds at once (3 bytes each): a batch of large photographs is decoded in
# groups, so that its decoded images never take more than about 400 MB of device memory together.
MAX_DECODE_PIXELS = 1 << 27
# What decode_jpeg raises on a file it refuses (RuntimeError from libjpeg or nvJPEG, ValueError on odd input).
DEVICE_DECODE_ERRORS = (RuntimeError, ValueError)
# torchvision 0.29 deprecates its image codecs (for TorchCodec); the warning would be repeated every step.
_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


@dataclass
class Fetched:
    """What a worker hands over for one place of the batch: a JPEG's bytes and crop box, or an image it decoded.

    Attributes:
        key: ``(index, step, slot)``: the sample asked for and its place in the global batch of ``step``.
        attempt: the place in ``replacements(index)`` of the sample read (0: ``index`` itself).
        label: that sample's label.
        failed: the indices that failed on the way (unreadable headers, failed worker decodes), in order.
        crop: the crop of a JPEG left to the device (``None`` for an image decoded in the worker).
        encoded: the JPEG file (in the worker only: :func:`collate_fetched` gathers the batch's into one tensor).
        image: uint8 ``(3, S, S)`` decoded in the worker (in the worker only, likewise).
    """

    key: tuple[int, int, int]
    attempt: int
    label: int
    failed: list[int] = field(default_factory=list)
    crop: Crop | None = None
    encoded: bytes | None = None
    image: torch.Tensor | None = None


@dataclass
class FetchedBatch:
    """A batch as the workers hand it to the main process: one flat tensor of JPEG files, one of decoded images.

    Attributes:
        samples: per place of the batch, its :class:`Fetched` without the file or image.
        jpeg_slots: the places whose JPEG is decoded on the device, in order.
        encoded: uint8 ``(total bytes,)``: those JPEG files one after the other.
        lengths: the size in bytes of each.
        decoded_slots: the places decoded in the workers, in order.
        decoded: uint8 ``(len(decoded_slots), 3, S, S)`` (empty when none).
    """

    samples: list[Fetched]
    jpeg_slots: list[int]
    encoded: torch.Tensor
    lengths: list[int]
    decoded_slots: list[int]
    decoded: torch.Tensor


def _read(source: str | IO[bytes]) -> bytes:
    """The whole file at a path, or a binary file object (a shard member) from its start."""
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return handle.read()
    source.seek(0)
    return source.read()


def fetch(images: FileBackedImages, seed: int, index: int, key: tuple[int, int, int], attempt: int) -> Fetched:
    """Sample ``index`` read for place ``key`` (in a worker): a JPEG's bytes and box, or the image cropped by PIL
    exactly as the worker path crops it (anything but a clean RGB or grayscale JPEG).

    Raises:
        DECODE_ERRORS: the file can't be read, its header can't be parsed, or PIL fails to decode it.
    """
    _, step, slot = key
    data = _read(images.source_of(index))
    with open_image(io.BytesIO(data)) as image:
        box = random_resized_box(*image.size, crop_random(seed, step, slot))
        label = images.label_of(index)
        if image.format in JPEG_FORMATS and image.mode in DEVICE_MODES and data.endswith(END_OF_IMAGE):
            crop = Crop(box, *image.size, draft_scale(image, box, images.image_size))
            return Fetched(key, attempt, label, crop=crop, encoded=data)
        return Fetched(key, attempt, label, image=crop_to_tensor(image, box, images.image_size))


class FetchedCrops(Dataset[Fetched]):
    """The training view of ``--decode device``: key ``(index, step, slot)`` -> :class:`Fetched`, in a worker.

    Unreadable files are replaced as :meth:`FileBackedImages.load` replaces them: the first candidate of
    :func:`replacements` whose header reads (and that decodes, when the worker decodes it) is handed over.
    """

    def __init__(self, images: FileBackedImages, seed: int) -> None:
        self.images, self.seed = images, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> Fetched:
        failed: list[int] = []
        for attempt, candidate in enumerate(replacements(key[0], len(self.images))):
            try:
                fetched = fetch(self.images, self.seed, candidate, key, attempt)
            except DECODE_ERRORS:
                failed.append(candidate)
                continue
            fetched.failed = failed
            return fetched
        raise DataError(f"no image of {self.images.where} can be decoded ({len(self.images)} tried)")


def collate_fetched(samples: list[Fetched]) -> FetchedBatch:
    """The batch's JPEG files gathered into one tensor and its worker-decoded images stacked (in the worker: one
    shared-memory tensor each crosses to the main process, not one per image)."""
    jpeg_slots = [slot for slot, sample in enumerate(samples) if sample.encoded is not None]
    decoded_slots = [slot for slot, sample in enumerate(samples) if sample.image is not None]
    files = [samples[slot].encoded or b"" for slot in jpeg_slots]
    lengths = [len(data) for data in files]
    encoded = torch.empty(sum(lengths), dtype=torch.uint8)
    flat, start = encoded.numpy(), 0
    for data in files:
        flat[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
        start += len(data)
    images = [image for sample in samples if (image := sample.image) is not None]
    decoded = torch.stack(images) if images else torch.empty(0, dtype=torch.uint8)
    stripped = [replace(sample, encoded=None, image=None) for sample in samples]
    return FetchedBatch(stripped, jpeg_slots, encoded, lengths, decoded_slots, decoded)


def _decode_jpeg(encoded: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """torchvision's ``decode_jpeg`` into RGB: on CUDA by nvJPEG (a list in one batched call), else on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    where = device if device.type == "cuda" else torch.device("cpu")
    if where.type == "cuda":
        # nvJPEG writes its outputs from a stream of its own that does not wait for the caller's: a block the caching
        # allocator recycles from a tensor that queued kernels still read (the last training step's) would be
        # overwritten before they run (pytorch/vision#9606). Waiting for the caller's stream first rules that out.
        torch.cuda.current_stream(where).synchronize()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=where)


def decode_jpegs(
    files: list[torch.Tensor], device: torch.device, *, batched: bool | None = None
) -> list[torch.Tensor | None]:
    """Each JPEG file (uint8 ``(bytes,)`` on the CPU) decoded to uint8 ``(3, H, W)`` on ``device``, or ``None``
    where ``decode_jpeg`` refuses it.

    ``batched`` (the default on CUDA, where nvJPEG decodes a list in one call) tries every file in one call first;
    when that raises (one bad file fails the whole call), they are decoded one by one, so that only the bad ones are
    lost. Elsewhere the files are decoded one by one on the CPU (the batched call is a loop there) and moved.
    """
    if batched if batched is not None else device.type == "cuda":
        try:
            return [image.to(device) for image in _decode_jpeg(files, device)]
        except DEVICE_DECODE_ERRORS:
            pass
    decoded: list[torch.Tensor | None] = []
    for data in files:
        try:
            image = _decode_jpeg(data, device)
        except DEVICE_DECODE_ERRORS:
            decoded.append(None)
            continue
        assert isinstance(image, torch.Tensor)
        decoded.append(image.to(device))
    return decoded


def _pixel_groups(slots: list[int], samples: list[Fetched], budget: int) -> Iterator[list[int]]:
    """Positions in ``slots`` cut into runs of at most ``budget`` full-size pixels (at least one file each)."""
    group: list[int] = []
    held = 0
    for position, slot in enumerate(slots):
        crop = samples[slot].crop
        pixels = crop.width * crop.height if crop is not None else 0
        if group and held + pixels > budget:
            yield group
            group, held = [], 0
        group.append(position)
        held += pixels
    if group:
        yield group


def continue_on_cpu(images: FileBackedImages, sample: Fetched, seed: int) -> tuple[torch.Tensor, int, list[int]]:
    """A JPEG that ``decode_jpeg`` refused, decoded by PIL as the worker path would, or when PIL refuses it too,
    the chain of :func:`replacements` continued from it: image uint8 ``(3, S, S)``, label, indices that failed."""
    index, step, slot = sample.key
    return images.training_sample(index, seed, step, slot, start=sample.attempt)


def assemble(
    batch: FetchedBatch, images: FileBackedImages, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The batch on ``device``: images uint8 ``(B, 3, S, S)``, labels int64 ``(B,)`` (on the CPU, as the worker
    path gives them) and every index that failed to decode on the way, in the worker path's order."""
    size, samples = images.image_size, batch.samples
    labels = [sample.label for sample in samples]
    failed = [list(sample.failed) for sample in samples]
    out = torch.empty((len(samples), 3, size, size), dtype=torch.uint8, device=device)
    if batch.decoded_slots:
        out[batch.decoded_slots] = batch.decoded.to(device)
    files = list(torch.split(batch.encoded, batch.lengths))
    for group in _pixel_groups(batch.jpeg_slots, samples, MAX_DECODE_PIXELS):
        decoded = decode_jpegs([files[position] for position in group], device)
        done: list[tuple[int, torch.Tensor, Crop]] = []
        for position, image in zip(group, decoded, strict=True):
            slot = batch.jpeg_slots[position]
            sample = samples[slot]
            if image is None:  # refused by decode_jpeg: PIL decides, as in the worker path
                from_pil, labels[slot], more = continue_on_cpu(images, sample, seed)
                out[slot] = from_pil.to(device)
                failed[slot] += more
            elif sample.crop is not None:  # (every JPEG left to the device has its crop)
                done.append((slot, image, sample.crop))
        if done:
            slots, decoded_images, crops = zip(*done, strict=True)
            out[list(slots)] = resize_crops(list(decoded_images), list(crops), size)
        del decoded, done
    return out, torch.tensor(labels, dtype=torch.long), [index for indices in failed for index in indices]


class DeviceDecodedStream(BatchStream):
    """A :class:`BatchStream` over a file-backed data set whose JPEGs are decoded and cropped on ``device`` (the
    module docstring says how); same batches contract, order, crop boxes and unreadable-file accounting.

    Args:
        dataset: a folder or shards.
        batch_size: per-process batch size.
        seed: fixes the order of every epoch and each crop.
        device: where JPEGs are decoded (nvJPEG on CUDA; on the CPU of the main process elsewhere) and cropped.
        workers: DataLoader workers reading the files.
    """

    def __init__(
        self,
        dataset: FileBackedImages,
        batch_size: int,
        seed: int,
        *,
        device: torch.device,
        workers: int = 2,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(dataset, batch_size, seed, rank=rank, world=world, workers=workers)
        self.decode_device = device

    def file_batches(self, images: FileBackedImages, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches decoded on ``decode_device`` from the bytes the workers read; unreadable files counted here."""
        for fetched in self.loader(FetchedCrops(images, self.seed), KeyedSteps(self, start_step), collate_fetched):
            batch_images, labels, failed = assemble(fetched, images, self.seed, self.decode_device)
            for index in failed:
                self.unreadable.setdefault(index, images.name_of(index))
            yield batch_images, labels


@functools.cache
def device_decode_problem(device: torch.device) -> str | None:
    """Why ``decode_jpeg`` can't decode on ``device`` here (torchvision without its image ops, nvJPEG missing), or
    ``None`` when a small JPEG decodes there."""
    probe = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(probe, format="JPEG")
    try:
        decoded = _decode_jpeg(torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8), device)
    except (ImportError, *DEVICE_DECODE_ERRORS) as error:
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[-1] if lines else 'no message'}"
    assert isinstance(decoded, torch.Tensor)
    return None if decoded.shape == (3, 16, 16) else f"a 16 x 16 JPEG decoded as {tuple(decoded.shape)}"


def decodes_on_device(decode: str, device: torch.device, dataset: Dataset[tuple[torch.Tensor, int]]) -> bool:
    """Whether ``--decode`` (``auto``, ``workers`` or ``device``) puts the training decode of ``dataset`` on
    ``device``: ``auto`` does for file-backed data on CUDA (when ``decode_jpeg`` works there; else it warns and
    decodes in the workers).

    Raises:
        DataError: ``--decode device`` for data held in memory, or on a device where ``decode_jpeg`` fails.
    """
    if decode not in DECODE_PLACES:
        raise DataError(f"--decode must be one of {', '.join(DECODE_PLACES)}; got {decode!r}")
    file_backed = isinstance(dataset, FileBackedImages)
    if decode == "workers" or (decode == "auto" and not (file_backed and device.type == "cuda")):
        return False
    if not file_backed:
        raise DataError(
            "--decode device decodes the files of a folder or of shards on the device; this data set is held in "
            "memory, decoded once (leave --decode at auto)"
        )
    problem = device_decode_problem(device)
    if problem is None:
        return True
    if decode == "device":
        raise DataError(
            f"--decode device: torchvision's decode_jpeg fails on {device} here ({problem}); use --decode workers"
        )
    warnings.warn(
        f"--decode auto: JPEGs are decoded in the workers, torchvision's decode_jpeg fails on {device} ({problem})",
        stacklevel=2,
    )
    return False


def training_stream(
    dataset: Dataset[tuple[torch.Tensor, int]],
    batch_size: int,
    seed: int,
    *,
    decode_on_device: bool,
    device: torch.device,
    workers: int = 2,
    rank: int = 0,
    world: int = 1,
) -> BatchStream:
    """The batch stream of a run's pretraining split: a :class:`DeviceDecodedStream` decoding on ``device`` when
    ``decode_on_device`` (what :func:`decodes_on_device` says of ``--decode``), else
    :meth:`BatchStream.for_dataset` (held in memory when small, decoded in the workers otherwise)."""
    if decode_on_device:
        if not isinstance(dataset, FileBackedImages):
            raise DataError("--decode device decodes the files of a folder or of shards; this data set has none")
        return DeviceDecodedStream(dataset, batch_size, seed, device=device, workers=workers, rank=rank, world=world)
    return BatchStream.for_dataset(dataset, batch_size, seed, workers=workers, device=device, rank=rank, world=world)
