"""The training loop's shared parts: the learning-rate schedule over a growing run (continue and
restart), and the in-memory batch source that benchmarks drive the job's Run with."""
import pytest
import torch

import tokenformer_vit  # noqa: F401
from tokenformer_vit.data import DataError, TensorBatches
from tokenformer_vit.engine import LRSchedule


def optimizer(lr=1e-3):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lrs(schedule, opt, steps, grow_at=()):
    """The learning rate of every step 1..steps, growing (as grow_training_state tells it) where asked."""
    out = []
    for step in range(steps):
        if step in grow_at:
            schedule.grown(step)
        out.append(opt.param_groups[0]['lr'])
        schedule.step_update(step + 1)
    return out


def test_continue_is_timms_cosine_with_warmup_step_for_step():
    from timm.scheduler import create_scheduler_v2
    a, b = optimizer(), optimizer()
    timm_sched, _ = create_scheduler_v2(a, 'cosine', num_epochs=10, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5,
                                        step_on_epochs=False, updates_per_epoch=7)
    ours = LRSchedule(b, total_steps=70, warmup_steps=14, warmup_lr=1e-6, min_lr=1e-5, planned=[35])
    expected = []
    for step in range(75):
        expected.append(a.param_groups[0]['lr'])
        timm_sched.step_update(step + 1)
    assert lrs(ours, b, 75, grow_at=[35]) == expected  # a growth does not touch a continued schedule


def test_restart_warms_up_again_at_each_growth_and_reaches_min_lr_by_the_next():
    opt = optimizer(1e-3)
    schedule = LRSchedule(opt, total_steps=30, warmup_steps=2, warmup_lr=1e-6, min_lr=1e-5, policy='restart',
                          planned=[10, 20])
    lr = lrs(schedule, opt, 30, grow_at=[10, 20])
    for start in (0, 10, 20):
        assert lr[start] == pytest.approx(1e-6)  # warmup begins again
        assert 0.9e-3 < lr[start + 2] < 1e-3  # warmed up: timm's cosine, which counts from the segment's start
        assert lr[start + 9] < 5e-5  # close to min_lr at the segment's end
    assert lr[:10] == pytest.approx(lr[10:20]) and lr[:10] == pytest.approx(lr[20:])  # three equal segments


def test_restart_without_the_growth_keeps_decaying_and_its_state_restores_the_restarts():
    opt = optimizer(1e-3)
    schedule = LRSchedule(opt, total_steps=30, warmup_steps=2, warmup_lr=1e-6, min_lr=1e-5, policy='restart',
                          planned=[10, 20])
    assert lrs(schedule, opt, 12)[10:] == pytest.approx([1e-5, 1e-5], abs=1e-7)  # no growth yet: stays at min_lr
    schedule.grown(12)
    state = schedule.state_dict()
    resumed = LRSchedule(optimizer(1e-3), total_steps=30, warmup_steps=2, warmup_lr=1e-6, min_lr=1e-5,
                         policy='restart', planned=[10, 20])
    resumed.load_state_dict(state)
    for step in range(12, 30):
        schedule.step_update(step)
        resumed.step_update(step)
        assert resumed.optimizer.param_groups[0]['lr'] == opt.param_groups[0]['lr'], step
    assert state['starts'] == [0, 12]


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
    with pytest.raises(DataError, match='uint8'):
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
