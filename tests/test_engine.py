"""The training loop's parts: the learning-rate schedule over a growing run (continue and restart)."""
import pytest
import torch

import tokenformer_vit  # noqa: F401
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
