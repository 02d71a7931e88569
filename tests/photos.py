"""Photograph-like test images, made rather than shipped: colour texture with a natural image's 1/f
amplitude spectrum (detail at every scale, as in fur or foliage, where resampling differences show
most), a few soft-edged objects, and JPEG's own artefacts from a round trip at quality 90."""
import io

import numpy as np
from PIL import Image


def photo_like(seed: int, height: int = 224, width: int = 224) -> np.ndarray:
    """An H×W×3 uint8 photograph-like image, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    shape = (height, width // 2 + 1)
    common = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / f
    img = np.empty((height, width, 3))
    for c in range(3):  # channels share most of their structure, as a photograph's do
        own = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / f
        plane = np.fft.irfft2(0.8 * common + 0.35 * own, s=(height, width))
        img[..., c] = rng.uniform(80, 150) + rng.uniform(35, 60) * (plane - plane.mean()) / (plane.std() + 1e-9)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(rng.integers(3, 7)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = 0.5 * img[inside] + 0.5 * rng.uniform(0, 255, 3)
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(np.clip(np.rint(img), 0, 255).astype(np.uint8)))).convert('RGB'))


def jpeg_bytes(img: np.ndarray, **options) -> bytes:
    """`img` encoded as JPEG (PIL's options: quality, subsampling, progressive, exif, ...)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', **dict(dict(quality=90), **options))
    return buf.getvalue()
