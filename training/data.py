"""ImageFolder loaders with the standard ImageNet transforms (spec §9.2), and a bundled tiny dataset.

Layout: ``ROOT/train/CLASS/img.jpg`` and ``ROOT/val/CLASS/img.jpg``. The train sampler is a
:class:`~torch.utils.data.DistributedSampler` in every case (world size 1 without torchrun), re-seeded per
epoch with ``seed + epoch``, so the data order of an epoch is the same whether or not the run was resumed.
Validation uses a strided shard per rank (no padding duplicates), so all-reduced counts are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision import datasets, transforms

from db.errors import LatlabError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "UnreadableImageError", "build_loaders", "check_layout",
           "make_digits_imagefolder", "read_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYOUT = "expected ImageFolder layout ROOT/train/CLASS/img.jpg and ROOT/val/CLASS/img.jpg"


class UnreadableImageError(LatlabError):
    """An image of the dataset cannot be decoded; the message names the file."""

    def __init__(self, message: str) -> None:
        # re-raised from a DataLoader worker, the message carries the worker's traceback: its last line is ours
        super().__init__(message.strip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1])


def read_image(path: str) -> Image.Image:
    """The RGB image at ``path`` (ImageFolder's loader); a file PIL cannot decode raises
    :class:`UnreadableImageError` naming it, not a traceback from inside PIL."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL raises all of these
        raise UnreadableImageError(f"cannot read image {path} ({type(exc).__name__}: {exc}); replace or remove "
                                   "it") from None


def _image_count(folder: Path) -> int:
    exts = datasets.folder.IMG_EXTENSIONS
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def check_layout(root: str | Path | None, train_dir: str = "train", val_dir: str = "val") -> tuple[Path, Path]:
    """``(train folder, val folder)``; raises :class:`LatlabError` (saying the expected layout) when unusable."""
    if root is None:
        raise LatlabError(f"data.path is not set; {_LAYOUT}")
    root = Path(root)
    if not root.is_dir():
        raise LatlabError(f"dataset folder {root} does not exist; {_LAYOUT}")
    out = [root / train_dir, root / val_dir]
    for folder in out:
        if not folder.is_dir():
            raise LatlabError(f"dataset folder {root} has no {folder.name!r} subfolder; {_LAYOUT}")
    for folder in out:
        classes = [d for d in folder.iterdir() if d.is_dir()]
        if not classes:
            raise LatlabError(f"{folder} has no class subfolders; {_LAYOUT}")
        if not any(_image_count(c) for c in classes):
            raise LatlabError(f"{folder} has class folders but no images "
                              f"({', '.join(datasets.folder.IMG_EXTENSIONS)}); {_LAYOUT}")
    return out[0], out[1]


def transforms_for(input_size: int | tuple[int, int], train: bool) -> transforms.Compose:
    """Train: RandomResizedCrop + flip; val: Resize(size·256/224) + CenterCrop; both ImageNet-normalised.
    ``(height, width)`` crops that shape (validation resizes each side by 256/224 first)."""
    norm = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip(), *norm])
    resize = int(input_size * 256 / 224) if isinstance(input_size, int) else tuple(int(s * 256 / 224)
                                                                                   for s in input_size)
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(input_size), *norm])


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, …`` (no padding: every sample is seen exactly once over all ranks)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(
    root: str | Path | None, *, input_size: int, batch_size: int, workers: int, seed: int, rank: int = 0,
    world: int = 1, train_dir: str = "train", val_dir: str = "val", val_batch_size: int | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader, list[str]]:
    """``(train loader, val loader, class names)``; call ``train.sampler.set_epoch(e)`` each epoch."""
    train_dir_p, val_dir_p = check_layout(root, train_dir, val_dir)
    try:
        train_set = datasets.ImageFolder(str(train_dir_p), transforms_for(input_size, True), loader=read_image)
        val_set = datasets.ImageFolder(str(val_dir_p), transforms_for(input_size, False), loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise LatlabError(f"cannot read {root} as an ImageFolder dataset: {exc}; {_LAYOUT}") from None
    if train_set.classes != val_set.classes:
        raise LatlabError(f"{train_dir_p} and {val_dir_p} have different class folders")
    if len(train_set) < batch_size * world:
        raise LatlabError(f"{train_dir_p} has {len(train_set)} images, fewer than one global batch "
                          f"({batch_size} × {world} processes)")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                       pin_memory=pin_memory, generator=gen, persistent_workers=False)
    val = DataLoader(val_set, batch_size=val_batch_size or batch_size, sampler=ShardSampler(len(val_set), rank, world),
                     num_workers=workers, pin_memory=pin_memory)
    return train, val, list(train_set.classes)


def seed_epoch(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Make epoch ``epoch``'s order and worker seeds a function of (seed, epoch, rank) only (exact resume)."""
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch * 1009 + rank)


def make_digits_imagefolder(root: str | Path, image_size: int = 32, per_class: int | None = None,
                            val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write scikit-learn's bundled 8×8 digits as RGB PNGs: ``root/{train,val}/<digit>/*.png`` (no download).

    Idempotent: an existing complete folder (marker file ``.complete``) is left as it is.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    marker = root / ".complete"
    if marker.is_file():
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = rng.permutation(idx)[: per_class or len(idx)]
        n_val = max(1, int(round(len(idx) * val_fraction)))
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                img = (digits.images[i] / 16.0 * 255).astype(np.uint8)
                pil = Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR).convert("RGB")
                pil.save(folder / f"{int(i):04d}.png")
    marker.write_text("sklearn.datasets.load_digits\n")
    return root
