"""run.py and the growth plan it follows: the one epoch loop grows at the planned epochs once, a run
stopped mid-epoch and rebuilt from its checkpoint state ends where the uninterrupted run ends, and
the plan answers what grows when, refusing a plan that would shrink the model or grow at an epoch a
resumed run has passed."""
import dataclasses

import pytest
import torch

import tokenformer_vit  # noqa: F401
from tokenformer_vit.config import study_config
from tokenformer_vit.growth import GrowthError, GrowthEvent, GrowthPlan
from tokenformer_vit.run import build_model, build_run, check_resume, train_epochs

SEED = 0


class Batches:
    """An in-memory loader as the job's: `n` batches an epoch, drawn from (SEED, epoch), from a skip."""

    def __init__(self, n: int):
        self.n, self.epoch, self.skip, self.dataset = n, 0, 0, self

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self):
        g = torch.Generator().manual_seed(SEED * 1000 + self.epoch)
        batches = [(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g),
                    torch.randint(0, 4, (4,), generator=g)) for _ in range(self.n)]
        yield from batches[self.skip:]


def tiny_run(resume=None):
    config = study_config(model='tokenformer_vit_tiny', seed=SEED, epochs=3, batch_size=4, lr=1e-3, ema_decay=0.9,
                          mixup=0, cutmix=0, drop_path=0.1, grow='1:12:24,2:16:32', grow_mode='ramp',
                          model_kwargs=dict(depth=1, embed_dim=32, num_heads=2, attn_tokens=8, ffn_tokens=16,
                                            patch_size=8, img_size=16))
    model, history = build_model(config, 4, resume)
    return build_run(config, model, 4, updates_per_epoch=3, growth_history=history, resume=resume)


def test_the_epoch_loop_grows_once_at_each_planned_epoch_and_a_stopped_run_resumes_to_the_same_end():
    print(f'seed {SEED}')
    straight, grown = tiny_run(), []
    epochs = [r['epoch'] for r in train_epochs(straight, Batches(3), on_growth=grown.append)]
    assert epochs == [0, 1, 2] and [g['attn_tokens'] for g in grown] == [[8, 12], [12, 16]]
    assert [g['step'] for g in straight.growth_history] == [3, 6] and straight.step == 9

    stopped, seen = tiny_run(), [0]
    results = list(train_epochs(stopped, Batches(3), should_stop=lambda: seen[-1] == 5,
                                on_step=lambda step, *rest: seen.append(step)))
    assert stopped.step == 5 and results[-1]['stopped'] and results[-1]['epoch'] == 1
    state = stopped.checkpoint_state(1, 0)  # mid-epoch 1, after its growth to 12/24
    resumed, again = tiny_run(resume=state), []
    assert resumed.step == 5 and resumed.model.attn_tokens == 12
    assert [r['epoch'] for r in train_epochs(resumed, Batches(3), on_growth=again.append)] == [1, 2]
    assert [g['attn_tokens'] for g in again] == [[12, 16]]  # the growth at epoch 1 is not made twice
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in straight.ema.module.state_dict().items():
        assert torch.equal(v, resumed.ema.module.state_dict()[k]), k
    # resumed with a plan that grows at an epoch the run has passed: refused, not silently skipped
    other = dataclasses.replace(resumed.config, growth=GrowthPlan.parse('0:12:24,2:16:32', mode='ramp'))
    with pytest.raises(GrowthError, match="--grow 0:12:24 is before epoch 1, where the run resumes"):
        check_resume(other, state, 1, 'last.pth.tar')
    check_resume(resumed.config, state, 1, 'last.pth.tar')  # the plan it was started with
    # or at the start of the epoch it resumes in the middle of: refused at that epoch's start
    other = dataclasses.replace(resumed.config, growth=GrowthPlan.parse('1:14:28,2:16:32', mode='ramp'))
    check_resume(other, state, 1, 'last.pth.tar')  # grows on from 12/24: nothing to refuse yet
    model, history = build_model(other, 4, state)
    late = build_run(other, model, 4, updates_per_epoch=3, growth_history=history, resume=state)
    with pytest.raises(GrowthError,
                       match='--grow 1:14:28 is at the start of epoch 1, which this run resumes at step 5'):
        next(train_epochs(late, Batches(3)))


def test_a_stop_requested_inside_train_epochs_is_seen_at_the_next_step():
    run, steps = tiny_run(), []
    results = list(train_epochs(run, Batches(3), should_stop=lambda: True, on_step=lambda step, *a: steps.append(step)))
    assert steps == [1] and len(results) == 1 and results[0]['stopped']


def test_the_growth_plan_says_what_grows_when_and_refuses_what_would_shrink():
    plan = GrowthPlan.parse('4:96:384,2:64:256:preserve', mode='paper', schedule='continue', ramp_epochs=0.5)
    assert str(plan) == '2:64:256:preserve,4:96:384' and GrowthPlan.parse(str(plan)).events == plan.events
    assert plan.at(2) == GrowthEvent(2, 64, 256, 'preserve') and plan.at(3) is None
    assert plan.mode_of(plan.at(2)) == 'preserve' and plan.mode_of(plan.at(4)) == 'paper'
    assert plan.restart_steps(10) == [20, 40]
    made = [dict(epoch=2, step=20, attn_tokens=[48, 64], ffn_tokens=[192, 256], mode='preserve')]
    assert plan.at(2, made) is None and plan.at(4, made) == GrowthEvent(4, 96, 384)
    initial = [dict(epoch=2, attn_tokens=[32, 64], ffn_tokens=[128, 256], source='small.pth.tar')]
    assert plan.at(2, initial) is not None  # an initial checkpoint's growth is not the plan's
    plan.check((48, 192), epochs=5)
    plan.check((64, 256), made, epochs=5)  # resumed after the first growth
    with pytest.raises(GrowthError, match='would shrink the model from 80/320'):
        plan.check((80, 320))
    with pytest.raises(GrowthError, match='--grow at epoch 4 never happens in a run of --epochs 4'):
        plan.check((48, 192), epochs=4)
    with pytest.raises(GrowthError, match='never shrink'):
        GrowthPlan.parse('1:64:256,2:32:256')
    assert not GrowthPlan.parse(None) and not GrowthPlan.parse('')


def test_a_run_started_from_a_smaller_checkpoint_builds_its_model_once_and_grows_it(tmp_path, monkeypatch):
    import timm
    kwargs = dict(depth=1, embed_dim=32, num_heads=2, patch_size=8)
    small = timm.create_model('tokenformer_vit_tiny', attn_tokens=8, ffn_tokens=16, img_size=16, num_classes=4,
                              **kwargs)
    torch.save({'state_dict': small.state_dict()}, tmp_path / 'small.pth.tar')
    config = study_config(model='tokenformer_vit_tiny', model_kwargs=dict(kwargs, attn_tokens=12, ffn_tokens=24),
                          img_size=16, initial_checkpoint=str(tmp_path / 'small.pth.tar'), grow_mode='preserve')
    built, create = [], timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda *a, **k: built.append(k.get('device')) or create(*a, **k))
    model, history = build_model(config, 4)
    assert [device for device in built if device != 'meta'] == [None]  # the target's sizes come from the meta device
    assert (model.attn_tokens, model.ffn_tokens) == (12, 24) and history[0]['attn_tokens'] == [8, 12]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), small.eval()(x), rtol=1e-5, atol=1e-5)  # preserve: the same function
