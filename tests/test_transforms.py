"""The recipe against timm's own code, number for number, on photograph-like images (tests/photos.py):
decoding, RandomResizedCrop, the evaluation resize, each RandAugment op and RandAugment's draws,
random erasing; and the draws of one sample independent of each other."""
import math
import random
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from photos import jpeg_bytes, photo_like
from tokenformer_vit.transforms import (RA_OPS, Draws, EvalTransform, RandAugment, Recipe, TrainTransform, apply_op,
                                        build_erasing, decode_rgb, normalize_batch, resized_crop, rrc_box)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILL = (124, 116, 104)  # timm's img_mean hparam for ImageNet's mean: round(255 * mean)


def mean_abs_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


def recipe(**values) -> Recipe:
    base = dict(img_size=224, crop_pct=0.875, interpolation='bicubic', mean=MEAN, scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3), hflip=0.5, train_interpolation='bicubic', rand_augment=True, color_jitter=0.0,
                aug_repeats=1)
    return Recipe(**dict(base, **values))


PHOTOS = [(0, 375, 500), (1, 500, 333), (2, 224, 224), (3, 150, 120)]  # (seed, height, width), as ImageNet's


@pytest.fixture(scope='module')
def photos():
    print('photo seeds', [p[0] for p in PHOTOS])
    return [photo_like(*p) for p in PHOTOS]


# ----------------------------------------------------------------------------------------------------------------
# decoding


def test_decoding_gives_pils_pixels_for_every_kind_of_image_exif_orientation_not_applied():
    from tokenformer_vit.make_shards import encode_sample
    img = photo_like(4, 120, 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": OpenCV's decoder applies it unless told not to
    cmyk, png, grey = (Image.fromarray(img).convert('CMYK'), Image.fromarray(img), Image.fromarray(img).convert('L'))
    kinds = {'baseline 4:2:0': jpeg_bytes(img), '4:4:4': jpeg_bytes(img, subsampling=0),
             'progressive': jpeg_bytes(img, progressive=True), 'EXIF orientation 6': jpeg_bytes(img, exif=exif),
             'greyscale': _save(grey, 'JPEG'), 'CMYK': _save(cmyk, 'JPEG'), 'PNG': _save(png, 'PNG')}
    for kind, data in kinds.items():
        expected = np.asarray(Image.open(__import__('io').BytesIO(data)).convert('RGB'))
        got = decode_rgb(data)
        assert got.shape == expected.shape == (120, 160, 3) and np.array_equal(got, expected), kind
    # make_shards keeps such a JPEG as it is, and what it re-encodes (--max-side) is not turned either
    from pathlib import Path
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'turned.jpg'
        path.write_bytes(kinds['EXIF orientation 6'])
        assert encode_sample(path) == kinds['EXIF orientation 6']
        assert decode_rgb(encode_sample(path, max_side=80)).shape == (60, 80, 3)


def _save(img: Image.Image, fmt: str) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# resizing: RandomResizedCrop and the evaluation transform


def test_rrc_box_draws_the_boxes_timm_draws_from_the_same_random_stream():
    from timm.data.transforms import RandomResizedCropAndInterpolation
    print('seeds 0..299')
    for seed in range(300):
        height, width = [(375, 500), (500, 333), (40, 400), (224, 224)][seed % 4]  # (40, 400): the fallback
        scale = [(0.08, 1.0), (0.85, 1.0), (0.9, 1.0)][seed % 3]
        random.seed(seed)
        theirs = RandomResizedCropAndInterpolation.get_params(Image.new('RGB', (width, height)), scale, (3 / 4, 4 / 3))
        assert rrc_box(random.Random(seed), height, width, scale, (3 / 4, 4 / 3)) == theirs, seed


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_random_resized_crop_of_a_fixed_box_equals_timms(photos, interpolation):
    from timm.data.transforms import RandomResizedCropAndInterpolation
    rrc = RandomResizedCropAndInterpolation(224, interpolation=interpolation)
    diffs = []
    for img in photos:
        h, w = img.shape[:2]
        # smaller than the output (upsampled), larger (downsampled), one side each way, the whole image
        for box in [(5, 7, 100, 90), (0, 0, min(h, 300), min(w, 280)), (h - 120, 0, 120, min(w, 260)), (0, 0, h, w)]:
            with mock.patch.object(rrc, 'get_params', lambda *a: box):
                theirs = np.asarray(rrc(Image.fromarray(img)))
            diffs.append(mean_abs_diff(resized_crop(img, box, 224, interpolation), theirs))
    print(interpolation, 'mean abs diff per box', [round(d, 4) for d in diffs])
    assert max(diffs) <= 1.0


@pytest.mark.parametrize('crop_pct,interpolation', [(0.875, 'bicubic'), (0.9, 'bilinear'), (1.0, 'bicubic')])
def test_eval_transform_equals_timms(photos, crop_pct, interpolation):
    from timm.data import create_transform
    theirs = create_transform(224, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                              use_prefetcher=True)  # uint8 out, as validate.py's prefetching loader takes it
    ours = EvalTransform(recipe(crop_pct=crop_pct, interpolation=interpolation))
    diffs = []
    for img in photos:
        expected = theirs(Image.fromarray(img)).permute(1, 2, 0).numpy()
        diffs.append(mean_abs_diff(ours(img), expected))
    print(crop_pct, interpolation, 'mean abs diff per photo', [round(d, 4) for d in diffs])
    assert max(diffs) <= 1.0


# ----------------------------------------------------------------------------------------------------------------
# RandAugment


def _timm_op(name: str, magnitude: float, sign: int, img: np.ndarray) -> np.ndarray:
    """timm's AugmentOp of that name ('increasing' variant), as MAE builds it, at a fixed magnitude and sign."""
    from timm.data import auto_augment as aa
    timm_name = dict(zip(RA_OPS, aa._RAND_INCREASING_TRANSFORMS))[name]
    hparams = dict(translate_const=100, img_mean=FILL, interpolation=Image.BICUBIC)
    op = aa.AugmentOp(timm_name, prob=1.0, magnitude=magnitude, hparams=hparams)
    # timm negates a value when random.random() > 0.5
    with mock.patch.object(aa.random, 'random', lambda: 0.0 if sign == 1 else 1.0):
        try:
            return np.asarray(op(Image.fromarray(img)))
        except ValueError:  # Pillow refuses timm's 0 bits at magnitude 10; ours keeps 1, timm's function at 1 bit
            assert name == 'Posterize' and magnitude == 10
            return np.asarray(aa.posterize(Image.fromarray(img), 1))


@pytest.mark.parametrize('name', RA_OPS)
def test_every_rand_augment_op_equals_timms_at_every_magnitude_and_sign(photos, name):
    img = resized_crop(photos[0], (0, 0, 375, 500), 224)
    worst = 0.0
    for magnitude in (0, 5, 9, 10):
        for sign in (1, -1):
            for picture in (img, photos[1]):
                worst = max(worst, mean_abs_diff(apply_op(picture, name, magnitude, sign, FILL), _timm_op(
                    name, magnitude, sign, picture)))
    print(name, 'largest mean abs diff', worst)
    assert worst <= 1.0


def test_apply_op_at_magnitude_9_moves_the_pixels_as_each_op_should(photos):
    # a change that timm's op and ours could share by mistake: each op does something, most of it large
    img = photos[2] // 2 + 40  # a dull photograph, which AutoContrast stretches
    moved = {name: mean_abs_diff(apply_op(img, name, 9, 1, FILL), img) for name in RA_OPS}
    print({k: round(v, 1) for k, v in moved.items()})
    assert all(v > 2 for v in moved.values()), moved
    assert moved['Posterize'] > 30 and moved['Invert'] > 40  # 4 - int(0.4 · 9) = 1 bit; 255 - x


def test_rand_augment_draws_ops_as_timm_does_over_10000_images():
    from timm.data.auto_augment import rand_augment_transform
    n, seed = 10_000, 0
    print(f'seed {seed}, {n} draws each')
    ra = rand_augment_transform('rand-m9-mstd0.5-inc1', dict(translate_const=100, img_mean=FILL,
                                                             interpolation=Image.BICUBIC))
    theirs, current = [], []
    for op in ra.ops:  # record what each op applies and at which magnitude, without touching an image
        op.aug_fn = (lambda name: lambda img, *a, **k: current.append(name) or img)(op.name)
        level_fn = op.level_fn
        op.level_fn = (lambda f: lambda m, hp: (current.append(m), f(m, hp) if f else ())[1])(level_fn)
    random.seed(seed)
    np.random.seed(seed)
    tiny = Image.new('RGB', (2, 2))
    for _ in range(n):
        current.clear()
        ra(tiny)
        # level_fn runs before aug_fn; ops without one record only their name
        theirs.append(_pairs(current))
    rng, ours_ra = random.Random(seed), RandAugment()
    ours = [[(name, m) for name, m, _, _ in ours_ra.draw(rng)] for _ in range(n)]
    for what, f in (('ops applied per image', lambda d: [len(x) for x in d]),
                    ('op applied', lambda d: [name for x in d for name, _ in x])):
        a, b = f(theirs), f(ours)
        for value in sorted(set(a) | set(b), key=str):
            p, q = a.count(value) / len(a), b.count(value) / len(b)
            sd = math.sqrt(max(p * (1 - p), 1e-4) * (1 / len(a) + 1 / len(b)))
            assert abs(p - q) <= 4 * sd, (what, value, p, q)
    ma = np.array([m for x in theirs for _, m in x if m is not None])
    mb = np.array([m for x in ours for name, m in x if name not in ('AutoContrast', 'Equalize', 'Invert')])
    print('magnitude mean/std: timm', ma.mean(), ma.std(), 'ours', mb.mean(), mb.std(), 'max', ma.max(), mb.max())
    assert abs(ma.mean() - mb.mean()) < 0.03 and abs(ma.std() - mb.std()) < 0.03 and ma.max() <= 10 and mb.max() <= 10


def _pairs(record):
    """timm's record of one image, [magnitude, name, name, magnitude, name, ...], as [(name, magnitude)]."""
    out, pending = [], None
    from tokenformer_vit.transforms import RA_OPS as ops
    timm_to_ours = dict(zip(__import__('timm').data.auto_augment._RAND_INCREASING_TRANSFORMS, ops))
    for item in record:
        if isinstance(item, str):
            out.append((timm_to_ours[item], pending))
            pending = None
        else:
            pending = item
    return out


# ----------------------------------------------------------------------------------------------------------------
# the transforms of one sample, and random erasing


def test_train_transform_is_timms_pipeline_for_the_same_draws(photos):
    # crop, flip, then each RandAugment op: our draws applied by timm's functions give our image
    transform = TrainTransform(recipe())
    rng = random.Random(3)
    print('seed 3')
    for img in photos:
        for _ in range(5):
            d = transform.draw(rng, *img.shape[:2])
            top, left, h, w = d.box
            pil = Image.fromarray(img).crop((left, top, left + w, top + h)).resize((224, 224), Image.BICUBIC)
            if d.flip:
                pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
            for name, magnitude, sign, _ in d.ops:
                pil = Image.fromarray(_timm_op(name, magnitude, sign, np.asarray(pil)))
            assert mean_abs_diff(transform.apply(img, d), pil) <= 1.0, d


def test_color_jitter_is_torchvisions_as_timm_builds_it_and_off_under_rand_augment(photos):
    # timm's transforms_imagenet_train: ColorJitter(b, c, s) unless RandAugment is on
    from timm.data import create_transform
    print('seed 5')
    rng = random.Random(5)
    jitter = TrainTransform(recipe(rand_augment=False, color_jitter=0.4))
    theirs = [t for t in create_transform(224, is_training=True, color_jitter=0.4).transforms
              if type(t).__name__ == 'ColorJitter'][0]
    for img in photos:
        d = jitter.draw(rng, *img.shape[:2])
        order, factors = d.jitter
        assert all(0.6 <= f <= 1.4 for f in factors) and sorted(order) == [0, 1, 2]
        crop = jitter.apply(img, Draws(d.box, d.interpolation, False, (), None))
        # timm's ColorJitter with its random order and factors set to ours (hue, its fourth, is None)
        params = (torch.tensor(list(order) + [3]), factors[0], factors[1], factors[2], None)
        with mock.patch.object(type(theirs), 'get_params', lambda *a: params):
            expected = np.asarray(theirs(Image.fromarray(crop)))
        got = jitter.apply(img, Draws(d.box, d.interpolation, False, (), d.jitter))
        assert mean_abs_diff(got, expected) == 0.0
    with_ra = TrainTransform(recipe(rand_augment=True, color_jitter=0.4))
    assert all(with_ra.draw(rng, 100, 120).jitter is None for _ in range(50))


def test_random_erasing_is_timms_on_the_normalised_batch_in_the_training_step():
    from timm.data.random_erasing import RandomErasing
    from tokenformer_vit.engine import StepParts, seed_step, train_one_epoch
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.head(x.mean((2, 3)))

    images = torch.from_numpy(np.stack([photo_like(s, 32, 32) for s in range(8)])).permute(0, 3, 1, 2)
    batches = [(images, torch.zeros(8, dtype=torch.long))] * 3
    model = Spy()
    parts = StepParts(torch.optim.SGD(model.parameters(), lr=0.0), (), torch.nn.CrossEntropyLoss(), torch.device('cpu'),
                      mean=MEAN, std=STD, seed=7, erasing=build_erasing(0.5, torch.device('cpu')))
    train_one_epoch(model, batches, parts, step=10)
    print('seed 7, steps 10-12')
    timm_erasing = RandomErasing(0.5, mode='pixel', max_count=1, device='cpu')
    erased = 0
    for step, x in zip(range(10, 13), seen):
        seed_step(7, 0, step)
        expected = timm_erasing(normalize_batch(images, MEAN, STD))
        assert torch.equal(x, expected)
        erased += int((x != normalize_batch(images, MEAN, STD)).flatten(1).any(1).sum())
    assert 0 < erased < 24  # some samples of the three batches, not all


def test_a_samples_draws_are_independent_of_each_other_and_of_random_erasing(tmp_path):
    # before: every transform read the same seed, so the first sample of every batch that was
    # erased was also flipped, and the flip and the first RandAugment op were correlated (-0.80).
    # The job's own run and loader: its epochs, its per-step seeds, its erasing.
    from tokenformer_vit.config import study_config
    from tokenformer_vit.data import DataConfig, build_loader
    from tokenformer_vit.make_shards import ShardSpec, make_shards
    from tokenformer_vit.run import build_model, build_run, train_epochs
    for c in range(2):
        (tmp_path / 'img' / f'c{c}').mkdir(parents=True)
        for i in range(40):
            Image.fromarray(photo_like(100 * c + i, 24, 28)).save(tmp_path / 'img' / f'c{c}' / f'{i}.jpg')
    make_shards(str(tmp_path / 'img'), 'train', tmp_path / 'wds', ShardSpec(shard_size=20, progress=False))
    seed, bs, epochs = 11, 16, 40
    print(f'seed {seed}: {epochs} epochs of 5 batches of {bs}')
    data = DataConfig(root=str(tmp_path / 'wds'), batch_size=bs, workers=0, seed=seed, max_pixels=10 ** 6,
                      shuffle_buffer=64, recipe=recipe(img_size=16))
    loader = build_loader(data, 'train', True)
    config = study_config(model='tokenformer_vit_tiny', img_size=16, epochs=epochs, batch_size=bs, seed=seed,
                          reprob=0.25, mixup=0.0, cutmix=0.0, ema_decay=0.0, lr=1e-4,
                          model_kwargs=dict(depth=1, embed_dim=16, num_heads=1, patch_size=8, attn_tokens=4,
                                            ffn_tokens=8))
    model, _ = build_model(config, 2)
    run = build_run(config, model, 2, len(loader))
    draws, batches, inputs = [], [], []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    original = TrainTransform.draw

    def spy(self, rng, h, w):
        draws.append(original(self, rng, h, w))
        return draws[-1]

    def view(epoch_loader, epoch, skip):
        for batch in epoch_loader:
            batches.append(batch)
            yield batch

    with mock.patch.object(TrainTransform, 'draw', spy):
        assert len(list(train_epochs(run, loader, view=view))) == epochs
    erased = torch.cat([(x != normalize_batch(b, MEAN, STD)).flatten(1).any(1) for (b, _), x in zip(batches, inputs)])
    erased = erased.numpy()
    flip = np.array([d.flip for d in draws])
    first_op = np.array([RA_OPS.index(d.ops[0][0]) if d.ops else -1 for d in draws])
    n = len(flip)
    assert n == len(erased) >= 100 * bs
    corr = {'flip-erased': np.corrcoef(flip, erased)[0, 1], 'flip-first op': np.corrcoef(flip, first_op)[0, 1],
            'flip-ops applied': np.corrcoef(flip, [len(d.ops) for d in draws])[0, 1]}
    print({k: round(v, 4) for k, v in corr.items()}, 'bound', 4 / math.sqrt(n))
    assert all(abs(v) < 4 / math.sqrt(n) for v in corr.values())
    first = np.arange(n) % bs == 0  # the first sample of each batch, which the shared seed tied
    p = flip[first & erased].mean()
    print('first samples: P(flip | erased)', p, 'of', int((first & erased).sum()))
    assert abs(p - 0.5) < 4 * 0.5 / math.sqrt((first & erased).sum())
