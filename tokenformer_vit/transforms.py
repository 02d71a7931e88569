"""Image decoding and augmentation with albumentations (docs/design.md, "Augmentation").

Training: RandomResizedCrop(224, scale=(0.08, 1)), horizontal flip, RandAugment (2 ops, magnitude 9,
magnitude std 0.5, as timm's `rand-m9-mstd0.5`), optional colour jitter, normalisation with the
model's mean/std, random erasing (p 0.25). Evaluation: resize the shorter side to 224/crop_pct
(bicubic), centre crop. Images are decoded to uint8 RGB with OpenCV's libjpeg-turbo decoder (the
fastest measured here, see bench_data.py); greyscale and CMYK JPEGs come out as RGB too.

RandAugment is built from albumentations ops; each op is applied with probability 0.5 at a
magnitude m' ~ N(9, 0.5) clipped to [0, 10], mapped as in timm's `auto_augment.py`:

    op             albumentations                         magnitude m' in [0, 10] ->
    AutoContrast   AutoContrast                           -
    Equalize       Equalize                               -
    Invert         InvertImg                              -
    Rotate         Affine(rotate)                         ±30·m'/10 degrees
    Posterize      Posterize(num_bits)                    4 + (10 - m')·4/10 bits, rounded (timm 'increasing')
    Solarize       Solarize(threshold)                    (256 - 256·m'/10)/255 of the range
    SolarizeAdd    (numpy) add 110·m'/10 below 128       +110·m'/10 to pixels < 128
    Color          ColorJitter(saturation)                factor 1 ± 0.9·m'/10
    Contrast       RandomBrightnessContrast(contrast)     factor 1 ± 0.9·m'/10
    Brightness     RandomBrightnessContrast(brightness)   factor 1 ± 0.9·m'/10
    Sharpness      Sharpen(alpha)                         blend 0.9·m'/10
    ShearX/Y       Affine(shear)                          ±0.3·m'/10 (as a slope: atan in degrees)
    TranslateX/Y   Affine(translate_percent)              ±0.45·m'/10 of the side

Albumentations does not reseed forked workers: `seed_transform` does it, per batch, from the
loader's seed, the epoch, the rank and the batch, so no two workers repeat each other's augmentations.
"""
import math
import warnings
from typing import Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

__all__ = ['decode_rgb', 'RandAugment', 'build_train_transform', 'build_eval_transform', 'normalize_batch',
           'build_mixup', 'seed_transform']

cv2.setNumThreads(1)  # one decoding thread per DataLoader worker


_IMREAD_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)  # OpenCV >= 4.10 decodes straight to RGB


# PIL's own warning threshold: above it an image is refused rather than decoded (a few hundred bytes
# of JPEG can claim 12000 x 12000 pixels, 430 MB once decoded)
MAX_IMAGE_PIXELS = 89_478_485


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than the decoder is allowed to allocate."""


def decode_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """JPEG (or any image) bytes to an H×W×3 uint8 RGB array; greyscale and CMYK become RGB.

    The header is read first, and an image of more than `max_pixels` pixels is refused
    (ImageTooLarge) before anything is allocated for it."""
    from io import BytesIO
    from PIL import Image
    with warnings.catch_warnings():  # PIL's own bomb warning: the limit here decides
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        with Image.open(BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    if width * height > max_pixels:
        raise ImageTooLarge(f'{width}x{height} pixels, above the limit of {max_pixels}')
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, _IMREAD_RGB) if _IMREAD_RGB is not None else cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        return np.asarray(Image.open(BytesIO(data)).convert('RGB'))  # raises on a corrupt image
    return img if _IMREAD_RGB is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _solarize_add(img: np.ndarray, add: int) -> np.ndarray:
    out = img.astype(np.int16)
    out = np.where(img < 128, np.minimum(out + add, 255), out)
    return out.astype(np.uint8)


class RandAugment(A.ImageOnlyTransform):
    """timm's RandAugment (rand-mM-nN-mstdS) from albumentations ops; see the module docstring."""

    OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
           'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 op_prob: float = 0.5, fill: Sequence[int] = (124, 116, 104), p: float = 1.0):
        super().__init__(p=p)
        self.num_ops, self.magnitude, self.magnitude_std, self.op_prob = num_ops, magnitude, magnitude_std, op_prob
        self.fill = tuple(fill)

    def _op(self, name: str, m: float, sign: float) -> A.BasicTransform:
        level = m / 10.0
        affine = dict(p=1.0, border_mode=cv2.BORDER_CONSTANT, fill=self.fill, interpolation=cv2.INTER_LINEAR)
        if name == 'AutoContrast':
            return A.AutoContrast(p=1.0)
        if name == 'Equalize':
            return A.Equalize(p=1.0)
        if name == 'Invert':
            return A.InvertImg(p=1.0)
        if name == 'Rotate':
            return A.Affine(rotate=(sign * 30 * level,) * 2, **affine)
        if name == 'Posterize':
            bits = int(round(4 + (1 - level) * 4))
            return A.Posterize(num_bits=(bits, bits), p=1.0)
        if name == 'Solarize':
            t = (256 - 256 * level) / 255
            return A.Solarize(threshold_range=(t, t), p=1.0)
        factor = 1 + sign * 0.9 * level
        if name == 'Color':
            return A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(factor, factor), hue=(0, 0), p=1.0)
        if name == 'Contrast':
            return A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(factor - 1,) * 2, p=1.0)
        if name == 'Brightness':
            return A.RandomBrightnessContrast(brightness_limit=(factor - 1,) * 2, contrast_limit=(0, 0), p=1.0)
        if name == 'Sharpness':
            return A.Sharpen(alpha=(0.9 * level,) * 2, lightness=(1.0, 1.0), p=1.0)
        if name in ('ShearX', 'ShearY'):
            deg = math.degrees(math.atan(sign * 0.3 * level))
            return A.Affine(shear={'x': (deg, deg), 'y': (0, 0)} if name == 'ShearX' else {'x': (0, 0), 'y': (deg, deg)},
                            **affine)
        t = sign * 0.45 * level
        return A.Affine(translate_percent={'x': (t, t), 'y': (0, 0)} if name == 'TranslateX' else
                        {'x': (0, 0), 'y': (t, t)}, **affine)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        rng = self.py_random
        for name in rng.sample(self.OPS, self.num_ops):
            if rng.random() > self.op_prob:
                continue
            m = min(10.0, max(0.0, rng.gauss(self.magnitude, self.magnitude_std)))
            sign = 1.0 if rng.random() < 0.5 else -1.0
            if name == 'SolarizeAdd':
                img = _solarize_add(img, int(110 * m / 10))
                continue
            op = self._op(name, m, sign)
            op.set_random_seed(rng.randrange(2 ** 31))
            img = op(image=img)['image']
        return img

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('num_ops', 'magnitude', 'magnitude_std', 'op_prob', 'fill')


def build_train_transform(img_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                          std: Sequence[float] = (0.229, 0.224, 0.225), scale: Tuple[float, float] = (0.08, 1.0),
                          rand_augment: bool = True, color_jitter: float = 0.0, reprob: float = 0.25,
                          normalize: bool = True) -> A.Compose:
    """The training augmentation. With normalize=False it returns uint8, to be normalised on the batch
    (`normalize_batch`), which moves a quarter of the bytes from the workers and runs on the GPU."""
    ops = [A.RandomResizedCrop(size=(img_size, img_size), scale=scale, interpolation=cv2.INTER_LINEAR),
           A.HorizontalFlip(p=0.5)]
    if rand_augment:
        ops.append(RandAugment())
    if color_jitter:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0,
                                 p=0.8))
    if reprob:  # random pixel values, as timm's RandomErasing(mode='pixel')
        ops.append(A.Erasing(scale=(0.02, 1 / 3), ratio=(0.3, 3.3), fill='random', p=reprob))
    if normalize:
        ops.append(A.Normalize(mean=mean, std=std))
    return A.Compose(ops)


def normalize_batch(images, mean: Sequence[float], std: Sequence[float]):
    """uint8 N×C×H×W images to float32, normalised with the model's mean and std (on their device)."""
    import torch
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return images.float().sub_(m).div_(s)


def build_eval_transform(img_size: int = 224, crop_pct: float = 0.875, mean: Sequence[float] = (0.485, 0.456, 0.406),
                         std: Sequence[float] = (0.229, 0.224, 0.225), normalize: bool = True) -> A.Compose:
    """Evaluation: shorter side to img_size/crop_pct (bicubic), centre crop to img_size."""
    ops = [A.SmallestMaxSize(max_size=int(math.floor(img_size / crop_pct)), interpolation=cv2.INTER_CUBIC),
           A.CenterCrop(height=img_size, width=img_size)]
    if normalize:
        ops.append(A.Normalize(mean=mean, std=std))
    return A.Compose(ops)


def build_mixup(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, smoothing: float = 0.1):
    """timm's Mixup/CutMix with label smoothing, applied to a normalised float batch; None when both are off."""
    if not mixup and not cutmix:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)


def seed_transform(transform: A.Compose, *ids: int) -> None:
    """Reseed albumentations' generators (it keeps its own, and does not reseed forked workers) from
    integers that name the stream: the loader's seed, epoch, rank, and the batch or worker."""
    seed = 0
    for i in ids:
        seed = (seed * 1_000_003 + int(i)) % 2 ** 61
    transform.set_random_seed(seed % 2 ** 31)
