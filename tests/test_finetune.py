"""Fine-tuning (pretrained.py, run.build_model, --pretrained-path, --layer-decay): a checkpoint of any
kind the job reads started on shards of another class count, as timm's train.py does it; layer-wise
learning-rate decay as timm computes it; growth composed with it; what is refused."""
import argparse
import subprocess
import sys

import pytest
import timm
import torch

from conftest import colour_shards
from job import REPO, TINY, one_sentence, run_cli, train
from tokenformer_vit.config import study_config
from tokenformer_vit.growth import grow_training_state
from tokenformer_vit.pretrained import load_pretrained, read_pretrained
from tokenformer_vit.run import build_model, build_run

SMALL = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8, img_size=32)  # the model of job.TINY
TOKENS = dict(attn_tokens=16, ffn_tokens=32)


@pytest.fixture(scope='module')
def three_classes(tmp_path_factory):
    """36 training and 9 validation images of 3 colour classes, where the `shards` fixture has 4."""
    return colour_shards(tmp_path_factory.mktemp('three'), classes=3, per_class=dict(train=12, validation=3), seed=1)


@pytest.fixture(scope='module')
def trained(shards, tmp_path_factory):
    """A checkpoint of the job's tiny model trained one epoch on the 4 classes of `shards`."""
    out = tmp_path_factory.mktemp('trained')
    train('--data-dir', shards, '--output', out, '--epochs', '1')
    return out / 'last.pth.tar'


def _timm_train_checkpoint(folder):
    """A checkpoint as timm's train.py writes it: through timm's CheckpointSaver, with its argparse flags."""
    from timm.utils import CheckpointSaver
    torch.manual_seed(3)
    model = timm.create_model('tokenformer_vit_tiny', num_classes=4, **SMALL, **TOKENS)
    optimizer = torch.optim.AdamW(model.parameters())
    args = argparse.Namespace(model='tokenformer_vit_tiny', model_kwargs=dict(SMALL, **TOKENS), num_classes=4)
    saver = CheckpointSaver(model, optimizer, args=args, checkpoint_dir=str(folder), recovery_dir=str(folder))
    saver.save_checkpoint(epoch=0, metric=50.0)
    return folder / 'last.pth.tar'


def _grown_local_dir(trained, folder):
    """The grow command's --hf-dir folder (timm's local-dir:) of `trained`, grown to 24/40 tokens."""
    out = subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint', str(trained),
                          '--attn-tokens', '24', '--ffn-tokens', '40', '--output', str(folder / 'grown.pth.tar'),
                          '--hf-dir', str(folder / 'hf')], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return folder / 'hf'


def _safetensors(trained, folder):
    """The weights of `trained` alone, as a .safetensors file."""
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in read_pretrained(trained).items()}, str(folder / 'weights.safetensors'))
    return folder / 'weights.safetensors'


@pytest.mark.parametrize('kind', ['job', 'grown local-dir', "timm's train.py", 'safetensors'])
def test_fine_tuning_on_other_classes_starts_from_the_checkpoints_backbone_with_a_new_head(
        kind, trained, three_classes, tmp_path):
    # real processes: the job's command. Its one step per epoch (36 images, batch 36) runs at the warmup's
    # first learning rate, 0, so the weights it saves are those it started from, step 0's
    source = {'job': lambda: trained, 'grown local-dir': lambda: _grown_local_dir(trained, tmp_path),
              "timm's train.py": lambda: _timm_train_checkpoint(tmp_path),
              'safetensors': lambda: _safetensors(trained, tmp_path)}[kind]()
    kwargs = ['--model-kwargs', *(f'{k}={v}' for k, v in SMALL.items() if k != 'img_size')]  # tokens: from it
    res = train('--data-dir', three_classes, '--output', tmp_path / 'ft', '--epochs', '1', '--batch-size', '36',
                '--warmup-epochs', '1', '--warmup-lr', '0', '--layer-decay', '0.65', '--pretrained-path', source,
                *kwargs)
    assert f'fine-tuning from {source}: backbone loaded, classifier new for 3 classes (the checkpoint\'s has 4)' \
        in res.stdout
    start = read_pretrained(source)
    saved = torch.load(tmp_path / 'ft' / 'last.pth.tar', weights_only=True)
    assert saved['step'] == 1
    weights = saved['state_dict']
    backbone = [k for k in start if not k.startswith('head.')]
    assert backbone and all(torch.equal(weights[k], start[k]) for k in backbone), 'the backbone moved'
    assert weights['head.weight'].shape[0] == 3
    torch.manual_seed(0)  # the job's --seed: the head as a new model of the checkpoint's size initialises it
    attn, ffn = start['blocks.0.attn.q.key_tokens'].shape[0], start['blocks.0.ffn.key_tokens'].shape[0]
    fresh = timm.create_model('tokenformer_vit_tiny', num_classes=3, drop_path_rate=0.1, attn_tokens=attn,
                              ffn_tokens=ffn, **SMALL)
    assert torch.equal(weights['head.weight'], fresh.head.weight) and torch.equal(weights['head.bias'], fresh.head.bias)


def test_fine_tuning_grows_a_smaller_checkpoint_keeping_its_function_and_records_where_it_started(trained):
    config = study_config(model='tokenformer_vit_tiny', model_kwargs=dict(SMALL, attn_tokens=24, ffn_tokens=48),
                          pretrained_path=str(trained), drop_path=0.0)
    lines = []
    model, history = build_model(config, num_classes=4, say=lines.append)
    assert (model.attn_tokens, model.ffn_tokens) == (24, 48)
    assert history[0]['source'] == str(trained) and history[0]['mode'] == 'preserve'
    assert 'classifier kept (4 classes); grown from attn_tokens=16, ffn_tokens=32 to 24/48 (preserve)' in lines[0]
    before = timm.create_model('tokenformer_vit_tiny', num_classes=4, **SMALL, **TOKENS).eval()
    before.load_state_dict(read_pretrained(trained))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    print('seed 5')
    assert (model.eval()(x) - before(x)).abs().max().item() <= 1e-5
    assert config.flags['pretrained_path'] == str(trained) and config.flags['grow_mode'] == 'preserve'


@pytest.mark.parametrize('classes', [4, 3])
@pytest.mark.parametrize('arch', ['tokenformer_vit_tiny', 'vit_tiny_patch16_224'])
def test_another_image_size_and_class_count_load_as_timms_load_pretrained(arch, classes, tmp_path):
    # timm's own loader, told the checkpoint's class count (4): the position embedding resampled to the
    # 48-px grid, the classifier kept for 4 classes, dropped (left as initialised) for 3
    torch.manual_seed(2)
    extra = TOKENS if arch.startswith('tokenformer') else {}
    source = timm.create_model(arch, num_classes=4, **SMALL, **extra)
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'src.pth.tar')
    at_48 = dict(SMALL, img_size=48)
    torch.manual_seed(7)
    theirs = timm.create_model(arch, pretrained=True, num_classes=classes, **at_48, **extra,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'src.pth.tar'), num_classes=4))
    torch.manual_seed(7)
    ours = timm.create_model(arch, num_classes=classes, **at_48, **extra)
    line = load_pretrained(ours, read_pretrained(tmp_path / 'src.pth.tar'), 'src')
    head = 'classifier kept (4 classes)' if classes == 4 else "classifier new for 3 classes (the checkpoint's has 4)"
    assert line.endswith(f'{head}; position embedding resampled from 4x4 to 6x6 patches')
    mine, timms = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == timms.keys() and all(torch.equal(mine[k], timms[k]) for k in mine)
    assert mine['pos_embed'].shape[1] == 37
    assert torch.equal(mine['head.weight'], source.head.weight) == (classes == 4)


def test_layer_decay_scales_each_block_as_timm_computes_it_and_keeps_the_weight_decay_groups(trained):
    from timm.optim import param_groups_layer_decay
    depth = 3
    flags = dict(model='tokenformer_vit_tiny', model_kwargs=dict(SMALL, depth=depth, **TOKENS), weight_decay=0.05,
                 lr=1e-3, warmup_epochs=0, epochs=2, ema_decay=0)
    scales, decays = {}, {}
    for ld in (None, 0.65):
        config = study_config(**flags, layer_decay=ld)
        model, _ = build_model(config, num_classes=4)
        run = build_run(config, model, 4, updates_per_epoch=5)
        names = {id(p): n for n, p in model.named_parameters()}
        scales[ld] = {names[id(p)]: g.get('lr_scale', 1.0) for g in run.optimizer.param_groups for p in g['params']}
        decays[ld] = {names[id(p)]: g['weight_decay'] for g in run.optimizer.param_groups for p in g['params']}
        for g in run.optimizer.param_groups:
            assert g['lr'] == pytest.approx(1e-3 * g.get('lr_scale', 1.0))
    assert decays[0.65] == decays[None]  # the job's weight-decay exclusions, unchanged
    assert decays[None]['blocks.0.attn.q.key_tokens'] == 0.05 and decays[None]['pos_embed'] == 0.0
    layer = {'cls_token': 0, 'pos_embed': 0, 'patch_embed.proj.weight': 0, 'blocks.0.attn.q.key_tokens': 1,
             'blocks.1.ffn.value_tokens': 2, 'blocks.2.attn.proj.value_tokens': 3, 'head.weight': depth + 1}
    for name, i in layer.items():
        assert scales[0.65][name] == pytest.approx(0.65 ** (depth + 1 - i)), name
    timms = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.65)
    names = {id(p): n for n, p in model.named_parameters()}
    assert scales[0.65] == {names[id(p)]: g['lr_scale'] for g in timms for p in g['params']}
    # a growth keeps each grown parameter token in its block's group
    grow_training_state(model, 24, 40, 'preserve', optimizer=run.optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    assert model.blocks[0].attn.q.key_tokens.shape[0] == 24
    assert {names[id(p)]: g['lr_scale'] for g in run.optimizer.param_groups for p in g['params']} == scales[0.65]


@pytest.mark.parametrize('flags,message', [
    (['--model-kwargs', 'depth=2', 'embed_dim=64', 'num_heads=2', 'patch_size=8'],
     "is not a checkpoint of --model tokenformer_vit_tiny with --model-kwargs {'depth': 2, 'embed_dim': 64"),
    (['--model-kwargs', 'depth=3', 'embed_dim=32', 'num_heads=2', 'patch_size=8'],
     'is not a checkpoint of --model tokenformer_vit_tiny with --model-kwargs {'),
    (['--model', 'vit_tiny_patch16_224', '--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'patch_size=8'],
     'is a Tokenformer-ViT checkpoint (it has parameter tokens) and --model vit_tiny_patch16_224 is not one'),
    (['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'patch_size=8', 'attn_tokens=8'],
     'holds attn_tokens=16, ffn_tokens=32, more than --model-kwargs asks for (8/32): a checkpoint grows'),
    (['--initial-checkpoint', '{ckpt}'], '--pretrained-path and --initial-checkpoint both name a checkpoint'),
    (['--eval-only'], '--eval-only evaluates a checkpoint as it is, and --pretrained-path starts a fine-tuning'),
    (['--grow-mode', 'paper'], '--grow-mode paper takes effect only when the model grows, and --pretrained-path'),
    (['--layer-decay', '0'], '--layer-decay is 0.0: it must be more than 0.'),
    (['--layer-decay', '1.5'], '--layer-decay is 1.5: it must be at most 1.'),
])
def test_what_fine_tuning_refuses_is_one_sentence_before_any_work(flags, message, trained, three_classes, tmp_path,
                                                                   capsys):
    out = tmp_path / 'ft'
    code, err = run_cli(['--data-dir', three_classes, '--output', out, '--pretrained-path', trained,
                         *[f.format(ckpt=trained) for f in flags]], capsys)
    assert code == 2 and message in one_sentence(err), err
    assert not out.exists() or not any(p.name.endswith('.pth.tar') for p in out.iterdir())


def test_a_fine_tuning_run_resumes_with_its_own_command_and_no_other(trained, three_classes, tmp_path, capsys):
    out = tmp_path / 'ft'
    flags = ['--data-dir', three_classes, '--output', out, '--epochs', '1', '--pretrained-path', trained]
    assert run_cli(flags, capsys)[0] == 0
    again = subprocess.run([sys.executable, str(REPO / 'train_imagenet.py'), *TINY, *map(str, flags)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and f'resumed from {out / "last.pth.tar"}' in again.stdout, again.stderr
    assert 'fine-tuning from' not in again.stdout  # the checkpoint is not read again
    code, err = run_cli(flags[:-2], capsys)
    assert code == 2 and f'was started with --pretrained-path {trained}, not no --pretrained-path' in err
