"""``multimnist``: the classic MultiMNIST (Sener & Koltun, 2018) from real MNIST files.

Reads the four MNIST idx files (optionally gzipped) from a directory the user
names; nothing is downloaded. Left digit at ``[0:28, 0:28]``, right digit at
``[6:34, 6:34]`` of a 36x36 canvas, pixel max; tasks ``left`` and ``right``.
The MNIST training images are split 90/10 into train/val pools before pairing;
the test pairs use the MNIST test images only.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from automtl.errors import UserError
from automtl.models import ModelSpec
from automtl.problems._pairs import overlay_pairs, split_indices
from automtl.problems.base import Problem, Task

DEFAULT_TASKS = ("left", "right")

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file of unsigned bytes (the MNIST format); raise UserError if malformed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read MNIST file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or data[3] not in (1, 3):
        raise UserError(f"{path} is not an MNIST idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"{path} is truncated or padded: {len(data)} bytes, header promises {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"MNIST directory {directory} lacks {stem} (or {stem}.gz); "
        f"expected files: {', '.join(FILES.values())}"
    )


def load_mnist(directory: str | Path) -> dict[str, np.ndarray]:
    """The four MNIST arrays keyed as in ``FILES``, checked for consistent shapes."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UserError(
            f"multimnist option 'root' must be a directory holding the MNIST idx files "
            f"({', '.join(FILES.values())}); {directory} does not exist"
        )
    arrays = {key: read_idx(_find(directory, stem)) for key, stem in FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
            raise UserError(f"{directory}: {part} images must be N x 28 x 28 and labels N, got "
                            f"{images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise UserError(f"{directory}: {len(images)} {part} images but {len(labels)} labels")
        if labels.max(initial=0) > 9:
            raise UserError(f"{directory}: {part} labels must be digits 0-9, found {labels.max()}")
    return arrays


def multimnist(root: str, train_pairs: int | None = None, eval_pairs: int | None = None, seed: int = 0) -> Problem:
    """Build MultiMNIST from the idx files in ``root``.

    ``train_pairs`` / ``eval_pairs`` default to the number of source images in each pool.
    """
    arrays = load_mnist(root)
    rng = np.random.default_rng(seed)
    train_images = arrays["train_images"].astype(np.float32) / 255.0
    test_images = arrays["test_images"].astype(np.float32) / 255.0
    train_pool, val_pool = split_indices(len(train_images), (0.9, 0.1), rng)
    test_pool = np.arange(len(test_images))
    return Problem(
        name="multimnist",
        tasks=[Task(name, 10) for name in DEFAULT_TASKS],
        train=overlay_pairs(train_images, arrays["train_labels"], train_pool,
                            train_pairs or len(train_pool), 6, rng, canvas=36),
        val=overlay_pairs(train_images, arrays["train_labels"], val_pool,
                          eval_pairs or len(val_pool), 6, rng, canvas=36),
        test=overlay_pairs(test_images, arrays["test_labels"], test_pool,
                           eval_pairs or len(test_pool), 6, rng, canvas=36),
        default_model=ModelSpec(arch="cnn", hidden=(128,), channels=(16, 32)),
        options={"root": str(root), "train_pairs": train_pairs, "eval_pairs": eval_pairs, "seed": seed},
    )
