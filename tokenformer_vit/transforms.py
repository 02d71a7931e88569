"""Decoding and the training recipe's image transforms, equal to timm's (docs/design.md, "Augmentation").

The paper trains with MAE's recipe, which is timm's `create_transform(224, is_training=True,
auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25, re_mode='pixel',
re_count=1)`; it evaluates with `resize(floor(224 / crop_pct))` and a centre crop. Each piece here
is held against timm's own function in tests/test_transforms.py:

- decoding: `decode_rgb` gives the pixels of `PIL.Image.open(f).convert('RGB')` (EXIF orientation
  is not applied, as PIL does not apply it), through OpenCV's faster decoder where the two agree;
- evaluation: timm's resize and centre crop themselves (torchvision's functions on a PIL image);
- RandomResizedCrop: timm's box (`rrc_box`), resized by PyTorch's antialiased uint8 kernel, PIL's
  algorithm in 16-bit fixed point (timm resizes PIL images, in 22-bit): 5x faster than PIL here,
  within 0.25 of its pixels on average;
- colour jitter (without RandAugment only, as timm): torchvision's adjustments, in random order;
- RandAugment: timm's 15 'increasing' ops, with timm's magnitude mappings, each through the PIL
  function that timm calls (`apply_op`);
- random erasing and Mixup/CutMix: timm's own classes, on the normalised batch on the device
  (`build_erasing`, `build_mixup`; engine.train_one_epoch).

Every random choice of a sample (its crop, interpolation, flip, RandAugment ops, magnitudes and
signs, colour jitter) is drawn in that order from one generator per batch (`batch_rng`), seeded from
the loader's seed, the epoch, the rank and the batch, so the transforms of a sample are independent
of each other and a resumed epoch draws what the uninterrupted one drew.
"""
import math
import random
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

__all__ = ['Recipe', 'decode_rgb', 'ImageTooLarge', 'MAX_IMAGE_PIXELS', 'INTERPOLATIONS', 'RA_OPS', 'apply_op',
           'RandAugment', 'rrc_box', 'resized_crop', 'TrainTransform', 'EvalTransform', 'batch_rng',
           'normalize_batch', 'build_erasing', 'build_mixup']

cv2.setNumThreads(1)  # one decoding thread per DataLoader worker

# PIL's own warning threshold: above it an image is refused rather than decoded (a few hundred bytes
# of JPEG can claim 12000 x 12000 pixels, 430 MB once decoded)
MAX_IMAGE_PIXELS = 89_478_485

INTERPOLATIONS = ('bicubic', 'bilinear', 'random')  # timm's --train-interpolation choices we support


@dataclass(frozen=True)
class Recipe:
    """The input pipeline of a run, as plain values that travel to the loader's workers; made from the
    job's flags by config.data_config, with the model's data config (input size, crop_pct,
    interpolation, mean, std) resolved by timm's resolve_data_config, as validate.py resolves it.
    Random erasing, Mixup and CutMix act on the batch on the device: they are the run's (RunConfig)."""
    img_size: int
    crop_pct: float  # evaluation: shorter side to floor(img_size / crop_pct), centre crop
    interpolation: str  # evaluation resize, the model's (timm's validate.py --interpolation)
    mean: Tuple[float, ...]  # the model's: RandAugment fills with round(255 * mean), as timm
    scale: Tuple[float, float]  # RandomResizedCrop's area range (timm --scale)
    ratio: Tuple[float, float]  # and its aspect range (timm --ratio)
    hflip: float  # timm --hflip
    train_interpolation: str  # RandomResizedCrop and RandAugment's geometric ops (timm --train-interpolation)
    rand_augment: bool  # timm --aa rand-m9-mstd0.5-inc1
    color_jitter: float  # timm --color-jitter (ignored while RandAugment is on, as timm: TrainTransform)
    aug_repeats: int  # augmented copies of each decoded sample (timm --aug-repeats, DeiT's repeated augmentation)


# ----------------------------------------------------------------------------------------------------------------
# decoding


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than the decoder is allowed to allocate."""


_CV2_RGB = hasattr(cv2, 'IMREAD_COLOR_RGB')  # OpenCV >= 4.10 decodes straight to RGB
_CV2_FLAGS = (cv2.IMREAD_COLOR_RGB if _CV2_RGB else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_frame(data: bytes) -> Optional[Tuple[int, int, int]]:
    """(height, width, components) from a JPEG's frame header, or None for anything else: the
    markers are walked without decoding (a twentieth of PIL's header parse)."""
    if data[:2] != b'\xff\xd8':
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF:
            if pos + 10 > end:
                return None
            height, width = int.from_bytes(data[pos + 5:pos + 7], 'big'), int.from_bytes(data[pos + 7:pos + 9], 'big')
            return height, width, data[pos + 9]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
    return None


def decode_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Image bytes to the H×W×3 uint8 array of `PIL.Image.open(...).convert('RGB')`, as timm decodes.

    The header is read first, and an image of more than `max_pixels` pixels is refused
    (ImageTooLarge) before anything is allocated for it. Greyscale and YCbCr (or RGB) JPEGs are
    decoded by OpenCV (libjpeg-turbo, the same pixels, 1.15x faster), told to ignore EXIF
    orientation as PIL does; every other image (CMYK JPEGs, PNG, ...) by PIL itself."""
    frame = jpeg_frame(data)
    if frame is not None and frame[2] in (1, 3) and 0 < frame[0] * frame[1] <= max_pixels:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
        if img is not None and img.shape[:2] == frame[:2]:
            return img if _CV2_RGB else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    with warnings.catch_warnings():  # PIL's own bomb warning: the limit here decides
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        with Image.open(BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(f'{width}x{height} pixels, above the limit of {max_pixels}')
            return np.array(img.convert('RGB'))  # raises on a corrupt image


# ----------------------------------------------------------------------------------------------------------------
# RandomResizedCrop


def _mode(interpolation: str):
    from torchvision.transforms import InterpolationMode
    return {'bicubic': InterpolationMode.BICUBIC, 'bilinear': InterpolationMode.BILINEAR}[interpolation]


def rrc_box(rng: random.Random, height: int, width: int, scale: Tuple[float, float],
            ratio: Tuple[float, float]) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop box, drawn as timm's
    RandomResizedCropAndInterpolation.get_params draws it: ten tries of an area and a log-uniform
    aspect, then the largest centred box within the aspect range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    aspect = width / height
    w, h = width, height
    if aspect < min(ratio):
        h = int(round(w / min(ratio)))
    elif aspect > max(ratio):
        w = int(round(h * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: np.ndarray, box: Tuple[int, int, int, int], size: int,
                 interpolation: str = 'bicubic') -> np.ndarray:
    """The box (top, left, height, width) of an H×W×3 uint8 image, resized to size × size as timm's
    RandomResizedCrop resizes it (PIL's antialiased filter), by PyTorch's uint8 kernel: given the
    crop in channels-last memory it runs its vectorised path and returns H×W×3 memory, which the
    batch then copies as it is (a channels-first result would cost a transposing copy as long)."""
    top, left, h, w = box
    crop = img[top:top + h, left:left + w]
    crop = torch.from_numpy(crop if crop.flags.writeable else crop.copy()).permute(2, 0, 1).unsqueeze(0)
    crop = crop.contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.interpolate(crop, size=(size, size), mode=interpolation, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------------------
# RandAugment, timm's 'rand-mM-mstdS-inc1'

RA_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
          'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
# timm's names: the 'increasing' variants (PosterizeIncreasing, ...) and relative translations (TranslateXRel)
_ENHANCE = dict(Color=ImageEnhance.Color, Contrast=ImageEnhance.Contrast, Brightness=ImageEnhance.Brightness,
                Sharpness=ImageEnhance.Sharpness)
_RESAMPLE = dict(bicubic=Image.BICUBIC, bilinear=Image.BILINEAR)


def _affine(img: Image.Image, matrix, fill, resample) -> Image.Image:
    # PIL maps each output pixel through `matrix` to the input: shears act about the top-left corner
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _pil_op(img: Image.Image, name: str, magnitude: float, sign: int, fill, resample) -> Image.Image:
    """One op at `magnitude` (0-10; level = magnitude / 10) on a PIL image, parameters as timm maps them."""
    level = magnitude / 10.0
    if name == 'AutoContrast':
        return ImageOps.autocontrast(img)
    if name == 'Equalize':
        return ImageOps.equalize(img)
    if name == 'Invert':
        return ImageOps.invert(img)
    if name == 'Rotate':  # ±30 degrees
        return img.rotate(sign * (level * 30.0), resample=resample, fillcolor=fill)
    if name == 'Posterize':  # keep 4 down to 0 bits; at least 1 (Pillow refuses 0, which blanked the image)
        return ImageOps.posterize(img, max(1, 4 - int(level * 4)))
    if name == 'Solarize':  # invert pixels at or above 256 down to 0
        return ImageOps.solarize(img, 256 - min(256, int(level * 256)))
    if name == 'SolarizeAdd':  # add up to 110 to pixels below 128
        add = min(128, int(level * 110))
        return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * len(img.getbands()))
    if name in _ENHANCE:  # blend factor 1 ± 0.9, at least 0.1
        return _ENHANCE[name](img).enhance(max(0.1, 1.0 + sign * (level * 0.9)))
    if name == 'ShearX':  # ±0.3
        return _affine(img, (1, sign * (level * 0.3), 0, 0, 1, 0), fill, resample)
    if name == 'ShearY':
        return _affine(img, (1, 0, 0, sign * (level * 0.3), 1, 0), fill, resample)
    if name == 'TranslateX':  # ±0.45 of the side
        return _affine(img, (1, 0, sign * (level * 0.45) * img.size[0], 0, 1, 0), fill, resample)
    if name == 'TranslateY':
        return _affine(img, (1, 0, 0, 0, 1, sign * (level * 0.45) * img.size[1]), fill, resample)
    raise ValueError(f'unknown RandAugment op {name!r}: use one of {", ".join(RA_OPS)}')


def apply_op(img: np.ndarray, name: str, magnitude: float, sign: int = 1,
             fill: Sequence[int] = (124, 116, 104), interpolation: str = 'bicubic') -> np.ndarray:
    """One RandAugment op on an H×W×3 uint8 image, as timm's AugmentOp applies the op of that name
    ('Posterize' is timm's 'PosterizeIncreasing', 'TranslateX' its 'TranslateXRel', ...) at this
    magnitude; `sign` -1 is the negated value that timm draws half the time, for the ops that have
    one. `fill` is what geometric ops bring in (timm: round(255 · mean)), `interpolation` how they resample."""
    out = _pil_op(Image.fromarray(img), name, magnitude, sign, tuple(fill), _RESAMPLE[interpolation])
    return np.asarray(out)


class RandAugment:
    """timm's RandAugment 'rand-m9-mstd0.5-inc1': `num_ops` ops drawn with replacement from the 15,
    each applied with probability `op_prob` at a magnitude drawn from N(magnitude, magnitude_std)
    clipped to [0, 10], negated half the time where it has a sign."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, op_prob: float = 0.5):
        self.num_ops, self.magnitude, self.magnitude_std, self.op_prob = num_ops, magnitude, magnitude_std, op_prob

    def draw(self, rng: random.Random, interpolation: str = 'bicubic') -> List[Tuple[str, float, int, str]]:
        """The ops one image gets: (name, magnitude, sign, interpolation) for each drawn op that
        applies, in order; with 'random', each op draws bilinear or bicubic, as timm's AugmentOp does."""
        ops = []
        for name in rng.choices(RA_OPS, k=self.num_ops):
            if rng.random() > self.op_prob:
                continue
            m = rng.gauss(self.magnitude, self.magnitude_std) if self.magnitude_std > 0 else self.magnitude
            sign = -1 if rng.random() > 0.5 else 1
            filt = rng.choice(('bilinear', 'bicubic')) if interpolation == 'random' else interpolation
            ops.append((name, max(0.0, min(10.0, m)), sign, filt))
        return ops


# ----------------------------------------------------------------------------------------------------------------
# the training and evaluation transforms


@dataclass(frozen=True)
class Draws:
    """The random choices of one training sample, drawn in this order."""
    box: Tuple[int, int, int, int]
    interpolation: str
    flip: bool
    ops: Tuple[Tuple[str, float, int, str], ...]  # RandAugment's: name, magnitude, sign, interpolation
    jitter: Optional[Tuple[Tuple[int, ...], Tuple[float, float, float]]]  # colour jitter: order, factors


class TrainTransform:
    """The training transform of a Recipe: RandomResizedCrop, horizontal flip, then RandAugment or
    colour jitter, as timm's transforms_imagenet_train; uint8 H×W×3 in and out."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.rand_augment = RandAugment() if recipe.rand_augment else None
        self.fill = tuple(min(255, round(255 * m)) for m in recipe.mean)

    def draw(self, rng: random.Random, height: int, width: int) -> Draws:
        r = self.recipe
        box = rrc_box(rng, height, width, r.scale, r.ratio)
        interpolation = r.train_interpolation
        if interpolation == 'random':  # timm's RandomResizedCrop picks one of the two
            interpolation = rng.choice(('bilinear', 'bicubic'))
        flip = rng.random() < r.hflip
        ops = tuple(self.rand_augment.draw(rng, r.train_interpolation)) if self.rand_augment else ()
        jitter = None
        if r.color_jitter and not self.rand_augment:  # timm: torchvision's ColorJitter(b, c, s), off under RandAugment
            order = list(range(3))
            rng.shuffle(order)
            factors = tuple(rng.uniform(max(0.0, 1 - r.color_jitter), 1 + r.color_jitter) for _ in range(3))
            jitter = (tuple(order), factors)
        return Draws(box, interpolation, flip, ops, jitter)

    def apply(self, img: np.ndarray, d: Draws) -> np.ndarray:
        img = resized_crop(img, d.box, self.recipe.img_size, d.interpolation)
        if d.flip:
            img = cv2.flip(img, 1)  # a copy, 30x faster to batch than numpy's reversed view
        if d.ops or d.jitter:
            pil = Image.fromarray(np.ascontiguousarray(img))
            for name, magnitude, sign, interpolation in d.ops:
                pil = _pil_op(pil, name, magnitude, sign, self.fill, _RESAMPLE[interpolation])
            if d.jitter:
                pil = _jitter(pil, *d.jitter)
            img = np.asarray(pil)
        return img

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        return self.apply(img, self.draw(rng, *img.shape[:2]))


def _jitter(img: Image.Image, order, factors) -> Image.Image:
    from torchvision.transforms import functional as F
    fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for i in order:
        img = fns[i](img, factors[i])
    return img


class EvalTransform:
    """timm's evaluation transform: the shorter side to floor(img_size / crop_pct), a centre crop of
    img_size; uint8 H×W×3 in and out. It is timm's own resize and crop (torchvision's functions on a
    PIL image), pixel for pixel: torchvision's faster uint8 resize differs from PIL's by a level here
    and there, and that moves the top-5 of a model that is unsure (tests/test_train.py)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.scale_size = math.floor(recipe.img_size / recipe.crop_pct)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        from torchvision.transforms import functional as F
        pil = F.resize(Image.fromarray(img), self.scale_size, interpolation=_mode(self.recipe.interpolation))
        return np.asarray(F.center_crop(pil, self.recipe.img_size))


def batch_rng(*ids: int) -> random.Random:
    """The generator of one batch's augmentations, from integers that name it: the loader's seed,
    epoch, rank and batch. Every sample of the batch draws from it in turn."""
    seed = 0
    for i in ids:
        seed = (seed * 1_000_003 + int(i)) % 2 ** 61
    return random.Random(seed)


# ----------------------------------------------------------------------------------------------------------------
# on the batch, on the device


def normalize_batch(images, mean: Sequence[float], std: Sequence[float]):
    """uint8 N×C×H×W images to float32, normalised with the model's mean and std (on their device),
    as timm's PrefetchLoader does."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return images.float().sub_(m).div_(s)


def build_erasing(probability: float, device: torch.device):
    """timm's RandomErasing(mode='pixel', count 1) for normalised batches on `device`: each sample,
    with this probability, gets one box of N(0, 1) noise; None when off. It draws from Python's
    `random` and torch's generator, which engine.seed_step seeds at every step."""
    if not probability:
        return None
    from timm.data.random_erasing import RandomErasing
    return RandomErasing(probability, mode='pixel', max_count=1, device=device)


def build_mixup(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, smoothing: float = 0.1):
    """timm's Mixup/CutMix with label smoothing, applied to a normalised float batch; None when both are off."""
    if not mixup and not cutmix:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)
