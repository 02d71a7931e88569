"""config.py: the job's flags and YAML configs, each bad value one sentence and exit code 2 before
any work, and every shipped config minimal and buildable."""
import pytest
import torch

from tokenformer_vit.config import job_config, parse_args
from tokenformer_vit.growth import GrowthError, GrowthEvent, GrowthPlan

from job import REPO, one_sentence, run_cli, train


def test_bad_config_flag_and_schedule_are_one_clear_error(tmp_path, capsys, shards):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: tokenformer_vit_tiny\nlearning_rate: 0.1\n')
    with pytest.raises(SystemExit) as e:
        parse_args(['--config', str(bad), '--data-dir', 'x', '--output', 'y'])
    assert e.value.code == 2 and 'unknown key(s) learning_rate' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(['--data-dir', 'x', '--output', 'y', '--learning-rate', '0.1'])
    assert 'unrecognized arguments: --learning-rate' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(['--config', str(tmp_path / 'none.yaml')])
    assert 'does not exist' in capsys.readouterr().err
    with pytest.raises(GrowthError, match='EPOCH:ATTN_TOKENS:FFN_TOKENS'):
        GrowthPlan.parse('3:100')
    with pytest.raises(GrowthError, match='never shrink'):
        GrowthPlan.parse('1:64:128,2:32:256')
    plan = GrowthPlan.parse([{'epoch': 2, 'attn_tokens': 8, 'ffn_tokens': 16}, '1:4:8:paper'])
    assert plan.events == (GrowthEvent(1, 4, 8, 'paper'), GrowthEvent(2, 8, 16)) and str(plan) == '1:4:8:paper,2:8:16'
    res = train('--data-dir', tmp_path / 'missing', '--output', tmp_path / 'o', check=False)
    assert res.returncode == 2 and res.stderr.strip().count('\n') == 0 and 'does not exist' in res.stderr
    res = train('--data-dir', shards, '--output', tmp_path / 'o', '--amp', 'fp16', check=False)
    assert res.returncode == 2 and 'fp16 needs a CUDA GPU' in res.stderr


@pytest.mark.parametrize('flags,message', [
    (['--epochs', 0], '--epochs is 0: it must be at least 1'),
    (['--batch-size', -8], '--batch-size is -8: it must be at least 1'),
    (['--lr', 0], '--lr is 0.0: it must be more than 0'),
    (['--workers', -1], '--workers is -1: it must be at least 0'),
    (['--epochs', 3, '--grow', '3:24:48'], '--grow at epoch 3 never happens in a run of --epochs 3'),
    (['--epochs', 3, '--grow', '1:8:48'], 'would shrink the model from 16/32'),
    (['--epochs', 3, '--eval-only'], '--eval-only has nothing to evaluate'),
    (['--epochs', 3, '--num-classes', 2], '--num-classes 2 is fewer than the 4 classes'),
    (['--epochs', 3, '--initial-checkpoint', 'WIDE'], 'does not fit --model tokenformer_vit_tiny'),
    (['--epochs', 3, '--initial-checkpoint', 'GARBAGE'], 'could not be read as a safetensors file'),
    (['--epochs', 3, '--initial-checkpoint', 'MISSING'], 'does not exist: pass a checkpoint file'),
    (['--model', 'tokenformer_vit_huge'], '--model tokenformer_vit_huge is not a timm model'),
    (['--opt-betas', 0.9, 1.5], 'each beta must be in [0, 1)'),
    (['--scale', 0.5, 0.1], 'pass MIN MAX with 0 < MIN <= MAX <= 1'),
    # found by the issue-24 sweep: each passed the checks and failed later, or never
    (['--crop-pct', 95], '--crop-pct is 95.0: it must be at most 1'),
    (['--epochs', 3, '--grow=-1:24:48'], "--grow entry '-1:24:48': the epoch must be at least 0"),
    (['--smoothing', 1.5], '--smoothing is 1.5: it must be less than 1'),
    (['--reprob', 2], '--reprob is 2.0: it must be at most 1'),
    (['--drop-path', 1], '--drop-path is 1.0: it must be less than 1'),
    (['--device', 'gpu'], '--device gpu is not a device: use cpu, cuda or cuda:N'),
    (['--lr', 'nan'], '--lr is nan: pass a finite number'),
    (['--blr', 'inf'], '--blr is inf: pass a finite number'),
    (['--img-size', 4], '--img-size 4 is smaller than the patch size 8'),
    (['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=0', 'ffn_tokens=32', 'patch_size=8'],
     'needs at least one parameter token'),
    (['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=3', 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8'],
     'dim=32 must be divisible by num_heads=3'),
    (['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16.5', 'ffn_tokens=32', 'patch_size=8'],
     'needs a whole number of parameter tokens, got num_tokens=16.5'),
    (['--config', 'BINARY'], 'is not text: pass a YAML file'),
    # the recipe's flags (issue 31)
    (['--ratio', 1.5, 0.5], '--ratio 1.5 0.5: pass MIN MAX with 0 < MIN <= MAX'),
    (['--hflip', 1.5], '--hflip is 1.5: it must be at most 1'),
    (['--aug-repeats', 0], '--aug-repeats is 0: it must be at least 1'),
    (['--train-interpolation', 'nearest'], "argument --train-interpolation: invalid choice: 'nearest'"),
])
def test_bad_flags_are_one_sentence_and_exit_2_before_any_training(shards, tmp_path, capsys, flags, message):
    import timm
    wide = tmp_path / 'wide.pth.tar'
    torch.save({'state_dict': timm.create_model('tokenformer_vit_tiny', depth=2, embed_dim=48, num_heads=2,
                                                attn_tokens=16, ffn_tokens=32, patch_size=8, img_size=32,
                                                num_classes=4).state_dict()}, wide)
    (tmp_path / 'garbage.safetensors').write_bytes(b'not a safetensors file at all')
    (tmp_path / 'binary.yaml').write_bytes(bytes(range(256)))
    flags = [{'WIDE': wide, 'GARBAGE': tmp_path / 'garbage.safetensors', 'MISSING': tmp_path / 'no.pth',
              'BINARY': tmp_path / 'binary.yaml'}.get(f, f) for f in flags]
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run' / 'a', *flags], capsys)
    assert code == 2 and message in one_sentence(err), err
    assert not (tmp_path / 'run').exists()  # a refusal leaves nothing behind: no folder, no lock


def test_yaml_numbers_that_yaml_reads_as_strings_are_taken_as_argparse_takes_them(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('lr: 1e-3\nepochs: 7\nmin_lr: 1e-6\n')  # YAML 1.1 reads 1e-3 as the string '1e-3'
    args = parse_args(['--config', str(cfg), '--data-dir', 'x', '--output', 'y'])
    assert args.lr == 1e-3 and args.min_lr == 1e-6 and args.epochs == 7


@pytest.mark.parametrize('yaml_text,message', [
    ('epochs: 2.5', 'epochs: 2.5 must be a whole number'),
    ('amp: fp8', "amp: 'fp8' must be one of bf16, fp16, none"),
    ('lr: fast', "lr: 'fast' must be a number"),
    ('rand_augment: 1', 'rand_augment: 1 must be true or false'),
    ('scale: 0.5', 'scale: 0.5 must be a list of 2 values'),
    ('model_kwargs: depth=2', "model_kwargs: 'depth=2' must be a mapping"),
    ('batch_size: 0', '--batch-size is 0: it must be at least 1'),
    ('grow: 5', 'grow: 5 must be a string'),
    ('epochs: "2.5"', "epochs: '2.5' must be a whole number"),
])
def test_yaml_values_are_checked_like_flags(tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(yaml_text + '\n')
    with pytest.raises(SystemExit) as e:
        parse_args(['--config', str(cfg), '--data-dir', 'x', '--output', 'y'])
    assert e.value.code == 2 and message in one_sentence(capsys.readouterr().err)


TRAIN_CONFIGS = sorted(p.name for p in (REPO / 'configs').glob('*.yaml'))


@pytest.mark.parametrize('config', TRAIN_CONFIGS)
def test_every_training_config_parses_and_builds_its_model(config):
    import timm
    args = parse_args(['--config', str(REPO / 'configs' / config)])
    plan = job_config(args).run.growth
    kwargs = dict(args.model_kwargs, **({'img_size': args.img_size} if args.img_size else {}))
    model = timm.create_model(args.model, device='meta', **kwargs)
    for event in plan.events:
        assert event.attn_tokens >= model.attn_tokens and event.ffn_tokens >= model.ffn_tokens
    if config == 'tokenformer_vit_base_pm_to_base.yaml':  # grows from _base_pm's token counts to _base's
        base = timm.create_model('tokenformer_vit_base', device='meta')
        assert (model.attn_tokens, model.ffn_tokens) == (576, 2304)
        assert (plan.events[-1].attn_tokens, plan.events[-1].ffn_tokens) == (base.attn_tokens, base.ffn_tokens)


@pytest.mark.parametrize('config', TRAIN_CONFIGS)
def test_every_training_config_holds_only_what_differs_from_the_defaults(config):
    import yaml
    from tokenformer_vit.config import build_parser
    defaults = vars(build_parser().parse_args([]))
    values = yaml.safe_load((REPO / 'configs' / config).read_text())
    same = [k for k, v in values.items() if k != 'model' and (defaults[k] == v or (
        isinstance(defaults[k], tuple) and list(defaults[k]) == v))]
    assert not same, f'{config} repeats the defaults of {same}'


def test_every_recipe_flag_reaches_the_loaders_recipe_or_the_run():
    # a recipe flag that the loader never sees would be a setting that does nothing
    from tokenformer_vit.config import data_config, job_args, run_config
    flags = dict(model='tokenformer_vit_tiny', data_dir='d', img_size=64, crop_pct=0.9, scale=[0.3, 0.9],
                 ratio=[0.5, 2.0], hflip=0.3, train_interpolation='random', rand_augment=False, color_jitter=0.2,
                 aug_repeats=3, batch_size=7, workers=3, seed=11, max_image_pixels=1000)
    args = job_args(**flags)
    data = data_config(args)
    r = data.recipe
    assert (r.img_size, r.crop_pct, r.scale, r.ratio, r.hflip, r.train_interpolation, r.rand_augment,
            r.color_jitter, r.aug_repeats) == (64, 0.9, (0.3, 0.9), (0.5, 2.0), 0.3, 'random', False, 0.2, 3)
    assert (data.root, data.batch_size, data.workers, data.seed, data.max_pixels) == ('d', 7, 3, 11, 1000)
    assert (r.interpolation, r.mean) == ('bicubic', (0.485, 0.456, 0.406))  # the model's, as validate.py's
    run = run_config(job_args(reprob=0.4, mixup=0.3, cutmix=0.2, smoothing=0.05))
    assert (run.reprob, run.mixup, run.cutmix, run.smoothing) == (0.4, 0.3, 0.2, 0.05)
