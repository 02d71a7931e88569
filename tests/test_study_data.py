"""benchmarks/study_data.py: the in-memory batches that the studies drive the job's Run with."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
from study_data import TensorBatches  # noqa: E402


def test_tensor_batches_reshuffle_per_epoch_resume_mid_epoch_and_evaluate_everything():
    seed = 3
    print(f'seed={seed}')
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)
    train = TensorBatches(images, labels, 3, flip=True, seed=seed)
    assert len(train) == 3  # the last partial batch is dropped
    epoch0 = [y.tolist() for _, y in train]
    again = [y.tolist() for _, y in train]
    train.set_epoch(1)
    epoch1 = [y.tolist() for _, y in train]
    assert epoch0 == again and epoch0 != epoch1
    train.set_epoch(0, skip_batches=2)
    assert [y.tolist() for _, y in train] == epoch0[2:]
    for x, y in train:
        assert torch.equal(x[:, 0, 0, 0], y.to(torch.uint8))  # images stay with their labels
    test = TensorBatches(images, labels, 3, training=False)
    assert [y.tolist() for _, y in test] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    with pytest.raises(ValueError, match='uint8'):
        TensorBatches(images.float(), labels, 3)


def test_tensor_batches_pad_crop_shifts_each_image_within_the_padding_and_leaves_flip_only_draws_alone():
    seed = 5
    print(f'seed={seed}')
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)  # no zeros: padding shows
    labels = torch.arange(64)
    plain = [(x, y) for x, y in TensorBatches(images, labels, 16, flip=True, seed=seed)]
    shifted = [(x, y) for x, y in TensorBatches(images, labels, 16, flip=True, seed=seed, pad_crop=2)]
    moved = 0
    for (x0, y0), (x1, y1) in zip(plain, shifted):
        assert torch.equal(y0, y1)  # the same order and flips as without the crop
        for a, b in zip(x0, x1):
            found = [(i, j) for i in range(-2, 3) for j in range(-2, 3)
                     if torch.equal(b, torch.nn.functional.pad(a, (2, 2, 2, 2))[:, 2 + i:10 + i, 2 + j:10 + j])]
            assert found, 'each image is its flipped self, shifted by at most the padding'
            moved += found[0] != (0, 0)
    assert moved > 40  # 24 of 25 shifts move the image
