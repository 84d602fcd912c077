"""What several families' specs share, as data (no torch): I/O contracts and backbone configurations."""

from __future__ import annotations

from dataclasses import dataclass

from mtc.artifact.manifest import ModelIO, Preprocess, QuantRecipe, TensorSpec

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


# Image models with a transformer backbone: INT8 covers its linear layers (attention projections
# and MLPs) besides the convs; LayerNorm, Softmax, GELU and attention's own MatMuls stay float
# (mtc.quant.qdq.RULES). Still photos join the built-in calibration data, as for any image model.
TRANSFORMER_IMAGE_RECIPE = QuantRecipe(builtin_photos=True, int8_op_types=("Conv", "MatMul", "Gemm"))


@dataclass(frozen=True)
class SwinConfig:
    """A Swin v1 backbone (patch 4, MLP ratio 4), as :class:`mtc.models.nn.swin.SwinTransformer` builds it."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of the four stage outputs, finest first."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    @property
    def levels(self) -> tuple[int, ...]:
        """Channels of the patch embedding, then of the four stages (for decoders that read both)."""
        return (self.embed_dim, *self.channels)
