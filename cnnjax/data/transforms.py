"""Host-side image framing: the evaluation crop/resize and the streaming training crop.

Both loaders frame evaluation images with the same ``Framing.eval``, so a model scores the
same on either. Resizing is PIL's antialiased bilinear filter. Images are
``[height, width, channels] uint8`` throughout; 1, 3 and 4 channels go through PIL in one
piece, other channel counts one channel at a time.

``Framing.train_encoded`` frames a training image from its file's bytes: for a JPEG and a
random-resized crop it reads the size from the header, draws the crop, and decodes with
libjpeg-turbo's DCT scaling (``simplejpeg``) at the smallest scale that still covers the
output size within the crop, then crops and resizes in one PIL pass. Same random draws as
``train``, so the same crops and flips; the pixels differ from ``train``'s by the decoder's
rounding and the filter's input scale, as any two JPEG decoders' do.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

# Inception-style random-resized crop (Szegedy et al. 2015), as in the torchvision and Flax
# ImageNet recipes: 8-100% of the area, aspect ratio 3/4-4/3, 10 tries before a central crop.
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[h, w, c] uint8`` -> ``[height, width, c] uint8`` (unchanged when already that size)."""
    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    if channels in _MODES:
        pil = Image.fromarray(image[..., 0] if channels == 1 else image, _MODES[channels])
        out = np.asarray(pil.resize((width, height), Image.BILINEAR))
        return out.reshape(height, width, channels)
    return np.stack([resize(image[..., i : i + 1], height, width)[..., 0]
                     for i in range(channels)], axis=-1)


def central_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, side, side)`` of the central square whose side is ``fraction`` of the
    shorter side (the whole image when ``fraction`` is 1 and it is not square)."""
    if fraction >= 1.0:
        return 0, 0, height, width
    side = max(1, int(round(min(height, width) * fraction)))
    return (height - side) // 2, (width - side) // 2, side, side


def central_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central square whose side is ``fraction`` of the shorter side."""
    top, left, h, w = central_crop_box(*image.shape[:2], fraction)
    return image[top : top + h, left : left + w]


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` of a random-resized crop of an image."""
    area = height * width
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fall back to the whole image, trimmed to the allowed aspect ratios.
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        h, w = height, int(round(height * CROP_RATIO[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class Framing:
    """How images become ``[height, width, channels]`` model inputs.

    Attributes:
      height, width, channels: the model's input shape.
      crop_fraction: evaluation takes the central square of this fraction of the shorter
        side and resizes it; 1.0 resizes the whole image.
      random_resized_crop: training crops at random (``CROP_AREA``, ``CROP_RATIO``) before
        resizing; otherwise training frames images as evaluation does.
      flip: training flips left-right with probability 1/2.
    """

    height: int
    width: int
    channels: int
    crop_fraction: float = 1.0
    random_resized_crop: bool = False
    flip: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def eval(self, image: np.ndarray) -> np.ndarray:
        """Deterministic framing: central crop (``crop_fraction`` < 1), then resize."""
        image = _channels(image, self.channels)
        if self.crop_fraction < 1.0:
            image = central_crop(image, self.crop_fraction)
        return resize(image, self.height, self.width)

    def train(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random framing for training: random-resized crop or ``eval``, then a random flip."""
        image = _channels(image, self.channels)
        if self.random_resized_crop:
            top, left, h, w = random_resized_crop_box(*image.shape[:2], rng)
            image = resize(image[top : top + h, left : left + w], self.height, self.width)
        else:
            image = self.eval(image)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def train_encoded(framing: Framing, data: bytes, rng: np.random.Generator) -> np.ndarray:
    """``framing.train`` of the image encoded in ``data``, decoding no more than it needs."""
    if not (framing.random_resized_crop and framing.channels in (1, 3) and _is_jpeg(data)):
        return framing.train(decode_bytes(data, framing.channels), rng)
    import simplejpeg

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    top, left, h, w = random_resized_crop_box(height, width, rng)
    # DCT scaling by 1/2, 1/4 or 1/8 (libjpeg-turbo's fast ones; its M/8 scalings are slower
    # than decoding in full) while the crop stays at least the output size.
    scale = 1
    while scale < 8 and h // (2 * scale) >= framing.height and w // (2 * scale) >= framing.width:
        scale *= 2
    colorspace = "GRAY" if framing.channels == 1 else "RGB"
    decoded = simplejpeg.decode_jpeg(data, colorspace=colorspace, fastdct=True,
                                     fastupsample=True) if scale == 1 else \
        simplejpeg.decode_jpeg(data, colorspace=colorspace, fastdct=True, fastupsample=True,
                               min_height=math.ceil(height / scale),
                               min_width=math.ceil(width / scale))
    fy, fx = decoded.shape[0] / height, decoded.shape[1] / width
    box = (left * fx, top * fy, min((left + w) * fx, decoded.shape[1]),
           min((top + h) * fy, decoded.shape[0]))
    pil = Image.fromarray(decoded[..., 0] if framing.channels == 1 else decoded)
    out = pil.resize((framing.width, framing.height), Image.BILINEAR, box=box)
    if framing.flip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out).reshape(framing.shape)


def decode_bytes(data: bytes, channels: int) -> np.ndarray:
    """An encoded image (any format PIL reads) as ``[h, w, channels] uint8``."""
    with Image.open(io.BytesIO(data)) as im:
        image = np.asarray(im.convert(_MODES.get(channels, "RGB")))
    return image[..., None] if image.ndim == 2 else image


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Greyscale with a missing channel axis gets one; 1 <-> 3 channels are converted."""
    if image.ndim == 2:
        image = image[..., None]
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if have in (3, 4) and channels == 1:
        rgb = image[..., :3].astype(np.float32)
        grey = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L"
        return np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None]
    if have == 4 and channels == 3:
        return image[..., :3]
    raise ValueError(f"an image has {have} channels where {channels} are expected")
