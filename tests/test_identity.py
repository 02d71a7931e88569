"""A run's identity is fixed at its start (issue 32): every flag outside config.RESUMABLE, and what the
job resolved from them (precision, classes, recipe, training shards), is compared on resume, and a
difference is refused in one sentence naming both values; --epochs changes only where the schedule
allows it."""
import argparse

import pytest
import torch

from job import one_sentence, run_cli, train
from tokenformer_vit.config import build_parser, plain
from tokenformer_vit.growth import GrowthPlan


def _other_value(action: argparse.Action, value):
    """A valid value of this flag other than `value`."""
    if action.dest == 'model_kwargs':
        return {'depth': 3}
    if action.dest == 'grow':
        return '2:24:48'
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return not value
    if action.choices:
        return next(c for c in action.choices if c != value)
    if action.nargs == 2:
        return [v * 0.5 for v in value]
    if action.type is int:
        return (value or 0) + 3
    if action.type is float:
        return (value or 0.0) + 0.125
    return f'{value}-other'


def test_every_flag_is_identity_unless_listed_as_resumable():
    from tokenformer_vit.identity import RESUMABLE, changed_settings
    # the class, walked: each of the parser's flags, changed, is reported unless the allow-list names it
    parser = build_parser()
    saved = plain(vars(parser.parse_args([])))
    reported, missed = [], []
    for action in parser._actions:
        if action.dest in ('help',):
            continue
        now = dict(saved, **{action.dest: plain(_other_value(action, saved[action.dest]))})
        found = [k for k, _, _ in changed_settings(saved, now)]
        if action.dest in RESUMABLE:
            assert found == [], action.dest
        else:
            (reported if found == [action.dest] else missed).append(action.dest)
    assert not missed, missed
    assert {'model_kwargs', 'grow_schedule', 'grow_mode', 'seed', 'lr', 'reprob', 'max_image_pixels'} <= set(reported)
    print(f'{len(reported)} identity flags, {len(RESUMABLE)} resumable')


def test_a_flag_added_after_a_save_counts_as_its_default():
    from tokenformer_vit.identity import changed_settings
    saved = plain(vars(build_parser().parse_args([])))
    del saved['hflip']
    now = dict(saved, hflip=0.5)
    assert changed_settings(saved, now) == []
    assert [k for k, _, _ in changed_settings(saved, dict(now, hflip=0.0))] == ['hflip']


@pytest.fixture(scope='module')
def softmax_run(shards, tmp_path_factory):
    """A finished two-epoch run of a softmax model, growing at epoch 1 (paper mode)."""
    out = tmp_path_factory.mktemp('identity') / 'run'
    train('--data-dir', shards, '--output', out, '--epochs', 2, '--grow', '1:24:48', '--model-kwargs', 'depth=2',
          'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8', 'pattention_norm=softmax')
    return out


SOFTMAX = ['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32',
           'patch_size=8', 'pattention_norm=softmax']


@pytest.mark.parametrize('change,message', [
    # the examples: each resumed silently before
    (['--grow-schedule', 'continue'], 'was started with --grow-schedule restart, not --grow-schedule continue'),
    (['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8'],
     'pattention_norm=softmax, not --model-kwargs depth=2 embed_dim=32'),
    (SOFTMAX + ['--seed', 5], 'was started with --seed 0, not --seed 5'),
    (SOFTMAX + ['--reprob', 0.25], 'was started with --reprob 0.0, not --reprob 0.25'),
    (SOFTMAX + ['--amp', 'bf16'], 'was started with no --amp, not --amp bf16'),
    (SOFTMAX + ['--epochs', 3], 'was started with --epochs 2, not 3'),
])
def test_resuming_with_another_setting_is_refused_naming_both_values(softmax_run, shards, capsys, change, message):
    before = (softmax_run / 'last.pth.tar').read_bytes()
    code, err = run_cli(['--data-dir', shards, '--output', softmax_run, '--epochs', 2, '--grow', '1:24:48', *change],
                        capsys)
    assert code == 2 and message in one_sentence(err), err
    assert (softmax_run / 'last.pth.tar').read_bytes() == before


def test_resuming_with_only_allowed_changes_goes_on(softmax_run, shards):
    res = train('--data-dir', shards, '--output', softmax_run, '--epochs', 2, '--grow', '1:24:48', *SOFTMAX,
                '--workers', 2,
                '--log-every', 5, '--save-every-steps', 3, '--progress')
    assert 'resumed from' in res.stdout


def test_resuming_on_rebuilt_training_shards_is_refused(softmax_run, shards, tmp_path, capsys):
    import shutil
    from tokenformer_vit.make_shards import ShardSpec, make_shards
    copy = tmp_path / 'wds'
    shutil.copytree(shards, copy)
    make_shards(str(shards.parent / 'images' / 'train'), 'train', copy, ShardSpec(shard_size=16, progress=False,
                                                                                  name='wds'))
    code, err = run_cli(['--data-dir', copy, '--output', softmax_run, '--epochs', 2, '--grow', '1:24:48', *SOFTMAX],
                        capsys)
    assert code == 2 and 'was trained on other train shards than those in --data-dir' in one_sentence(err), err


def test_eval_only_compares_only_what_builds_the_model(softmax_run, shards, capsys):
    ok = train('--data-dir', shards, '--output', softmax_run, '--eval-only', *SOFTMAX, '--batch-size', 5)
    assert 'model: top-1' in ok.stdout
    code, err = run_cli(['--data-dir', shards, '--output', softmax_run, '--eval-only'], capsys)
    assert code == 2 and 'pattention_norm=softmax' in one_sentence(err)


@pytest.mark.parametrize('grow,schedule,step,epochs,allowed', [
    ('8:24:48', 'restart', 30, 12, True),   # before the growth: this segment ends at epoch 8 either way
    ('8:24:48', 'restart', 30, 9, True),
    ('8:24:48', 'restart', 85, 12, False),  # after it: the cosine runs to the end
    ('8:24:48', 'restart', 80, 12, True),   # at its start, not yet grown: the new segment starts there
    ('8:24:48', 'continue', 30, 12, False),
    ('', 'restart', 30, 12, False),
    ('8:24:48', 'restart', 30, 8, False),   # the growth would no longer be before the end
])
def test_epochs_change_only_where_the_schedule_so_far_does_not_depend_on_it(grow, schedule, step, epochs, allowed):
    from dataclasses import replace
    from tokenformer_vit.config import study_config
    from tokenformer_vit.errors import ConfigError
    from tokenformer_vit.run import check_epochs
    config = replace(study_config(model='tokenformer_vit_tiny', epochs=epochs), growth=GrowthPlan.parse(grow,
                                                                                                        schedule=schedule))
    resume = dict(step=step, args=dict(epochs=10))
    if allowed:
        check_epochs(config, resume, 10, 'last.pth.tar')
    else:
        with pytest.raises(ConfigError, match='was started with --epochs 10'):
            check_epochs(config, resume, 10, 'last.pth.tar')


def test_a_restart_schedule_before_its_growth_may_be_lengthened(shards, tmp_path):
    out = tmp_path / 'run'
    flags = ['--data-dir', shards, '--output', out, '--grow', '2:24:48', '--save-every-steps', 4]
    proc = train(*flags, '--epochs', 3, popen=dict(cwd=tmp_path))
    import signal
    for line in proc.stdout:
        if line.startswith('epoch 0:'):
            break
    proc.send_signal(signal.SIGUSR2)
    proc.communicate(timeout=120)
    step = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)['step']
    assert step < 12  # before the growth at epoch 2
    res = train(*flags, '--epochs', 4)
    assert 'resumed from' in res.stdout and 'grew attn_tokens 16 -> 24' in res.stdout
