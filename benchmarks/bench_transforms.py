"""Where a photograph's time goes in the recipe's transforms, one core: decoding, the training crop's
resize (ours: PyTorch's uint8 kernel; timm's: PIL), the evaluation resize (PIL's, which ours uses, and
PyTorch's, which it does not), and each RandAugment op at magnitude 9 through PIL as timm applies it;
for the geometric ops, OpenCV's warpAffine beside them, with how far its pixels are from PIL's.
Medians of 5 passes over the photographs (default: ../shared/data/imagenet-sample-100).

    python benchmarks/bench_transforms.py [--images DIR] [--json out.json]
"""
import argparse
import glob
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from bench_data import report
from tokenformer_vit.transforms import RA_OPS, _pil_op, decode_rgb, resized_crop

FILL = (124, 116, 104)


def ms(fn, items, passes: int = 5) -> float:
    """Median milliseconds per item of fn over the items."""
    fn(items[0])
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        times.append((time.perf_counter() - t0) / len(items) * 1e3)
    return statistics.median(times)


def _shorter_to(hw, size: int):
    """torchvision's Resize(size) output (height, width): the shorter side to size, the other floored."""
    h, w = hw
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', default='../shared/data/imagenet-sample-100')
    p.add_argument('--json', default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    datas = [Path(f).read_bytes() for f in sorted(glob.glob(os.path.join(args.images, '*', '*')))]
    photos = [decode_rgb(d) for d in datas]
    boxes = [(h // 8, w // 8, h * 3 // 4, w * 3 // 4) for h, w in (x.shape[:2] for x in photos)]
    pairs = list(zip(photos, boxes))
    crops = [resized_crop(x, b, 224) for x, b in pairs]
    res = dict(decode_ms=ms(decode_rgb, datas),
               train_resize_ours_ms=ms(lambda xb: resized_crop(*xb, 224), pairs),
               train_resize_pil_ms=ms(lambda xb: Image.fromarray(xb[0]).crop(
                   (xb[1][1], xb[1][0], xb[1][1] + xb[1][3], xb[1][0] + xb[1][2])).resize((224, 224), Image.BICUBIC),
                   pairs))
    from torchvision.transforms import InterpolationMode, functional as F
    res['eval_resize_pil_ms'] = ms(lambda x: F.resize(Image.fromarray(x), 256, InterpolationMode.BICUBIC), photos)
    res['eval_resize_torch_uint8_ms'] = ms(lambda x: torch.nn.functional.interpolate(  # channels-last: its fast path
        torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0), size=_shorter_to(x.shape[:2], 256), mode='bicubic',
        antialias=True), photos)
    pils = [Image.fromarray(c) for c in crops]
    for name in RA_OPS:
        res[f'op_{name}_ms'] = ms(lambda im: _pil_op(im, name, 9, 1, FILL, Image.BICUBIC), pils)
    for name, matrix in (('ShearX', (1, 0.27, 0, 0, 1, 0)), ('TranslateX', (1, 0, 90.72, 0, 1, 0))):
        m = np.array(matrix, np.float64).reshape(2, 3)
        m[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5  # PIL samples at pixel centres
        warp = lambda x: cv2.warpAffine(x, m, (224, 224), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,  # noqa: E731
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)
        res[f'op_{name}_opencv_ms'] = ms(warp, crops)
        res[f'op_{name}_opencv_mean_abs_diff'] = float(np.mean([np.abs(
            warp(c).astype(float) - np.asarray(im.transform(im.size, Image.AFFINE, matrix, resample=Image.BICUBIC,
                                                            fillcolor=FILL))).mean() for c, im in zip(crops, pils)]))
    res.update(photographs=len(photos), torch=torch.__version__, pillow=Image.__version__, opencv=cv2.__version__)
    report(res, args.json)


if __name__ == '__main__':
    main()
