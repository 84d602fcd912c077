"""I/O contracts several families share, as data (no torch): the families' specs build on them."""

from __future__ import annotations

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fixed_size_image_io(size: tuple[int, int], *, multiple_of: int = 1, mean: tuple[float, ...] = IMAGENET_MEAN,
                        std: tuple[float, ...] = IMAGENET_STD) -> ModelIO:
    """An image model fed one RGB image resized to `size` (height, width) and normalised by
    mean/std (the runtime does both), returning an alpha in [0, 1] at that size."""
    # The normalised input's range: (0 - mean) / std up to (1 - mean) / std over the channels.
    value_range = (min(-m / s for m, s in zip(mean, std)), max((1 - m) / s for m, s in zip(mean, std)))
    return ModelIO(
        inputs=(TensorSpec("src", "image", layout="NCHW", value_range=value_range),),
        outputs=(TensorSpec("alpha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),),
        preprocess=Preprocess(scale=1.0 / 255.0, mean=mean, std=std, resize="fixed", fixed_size=size,
                              multiple_of=multiple_of),
    )
