"""Growth in width: preserve mode keeps the function, paper mode does not, checkpoints and the
optimizer grow with the model, and bad requests get one clear error."""
import copy
import subprocess
import sys

import pytest
import torch
import timm

import tokenformer_vit  # noqa: F401
from tokenformer_vit import Pattention, grow_model, grow_optimizer, grow_pattention
from tokenformer_vit.growth import GrowthError
from tokenformer_vit.grow_checkpoint import main as grow_main

SMALL = dict(img_size=32, patch_size=8, depth=2, num_classes=10)


def small_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model('tokenformer_vit_tiny', **dict(SMALL, **kwargs))


def trained_small_model(steps=5):
    """A model a few optimizer steps away from its init, so its tokens are not i.i.d. any more."""
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(steps):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize('norm', ['l2_gelu', 'gelu_l2'])
def test_preserve_growth_leaves_every_layer_unchanged(norm):
    torch.manual_seed(0)
    layer = Pattention(32, 24, 40, norm=norm)
    x = torch.randn(5, 32)
    before = layer(x)
    grow_pattention(layer, 100)
    assert layer.num_tokens == 100 and layer.tau.item() == pytest.approx(40 ** 0.5)
    assert layer.key_tokens[40:].abs().max().item() == 0.0 and layer.value_tokens[40:].abs().min().item() > 0.0
    assert (layer(x) - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize('train', [False, True])
def test_preserve_growth_leaves_the_model_unchanged(train):
    model = trained_small_model()
    model.train(train)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    before = model(x)
    grow_model(model, attn_tokens=256, ffn_tokens=1024)
    torch.manual_seed(1)  # same dropout / drop-path draws, if any
    after = model(x)
    assert (after - before).abs().max().item() <= 1e-5
    assert model.blocks[1].attn.proj.num_tokens == 256 and model.blocks[0].ffn.num_tokens == 1024


def test_paper_growth_changes_the_function_and_recomputes_tau():
    torch.manual_seed(0)
    layer = Pattention(64, 64, 100)
    x = torch.randn(16, 64)
    before = layer(x)
    grow_pattention(layer, 400, mode='paper')
    assert layer.tau.item() == pytest.approx(20.0)
    # random keys with the new τ change a layer's output by about its own size
    assert ((layer(x) - before).norm() / before.norm()).item() > 0.5
    model = small_model().eval()
    img = torch.randn(4, 3, 32, 32)
    feats = model.forward_features(img)
    grow_model(model, attn_tokens=256, ffn_tokens=1024, mode='paper')
    assert model.blocks[0].ffn.tau.item() == pytest.approx(32.0)
    assert ((model.forward_features(img) - feats).norm() / feats.norm()).item() > 0.05


def test_new_tokens_learn_after_preserve_growth():
    model = trained_small_model()
    grow_model(model, attn_tokens=256, ffn_tokens=1024)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,))).backward()
    grad = model.blocks[0].ffn.key_tokens.grad
    assert grad[768:].abs().max().item() > 0.0  # the new keys get a gradient through their non-zero values


def test_growth_works_on_an_ema_copy_and_records_model_args(tmp_path):
    from timm.utils import ModelEmaV3
    model = trained_small_model()
    ema = ModelEmaV3(model, decay=0.9)
    grow_model(model, 256, 1024)
    grow_model(ema.module, 256, 1024)
    ema.update(model)  # shapes agree again
    assert ema.module.blocks[0].ffn.num_tokens == 1024
    timm.models.save_for_hf(model, str(tmp_path / 'hf'))
    rebuilt = timm.create_model(f'local-dir:{tmp_path / "hf"}', pretrained=True)
    assert rebuilt.blocks[0].attn.q.num_tokens == 256 and rebuilt.blocks[0].ffn.num_tokens == 1024
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_shrinking_and_unknown_modes_are_refused():
    model = small_model()
    with pytest.raises(GrowthError, match='Cannot shrink attn_tokens from 192 to 100'):
        grow_model(model, attn_tokens=100)
    with pytest.raises(GrowthError, match="Unknown growth mode 'double'"):
        grow_model(model, attn_tokens=300, mode='double')
    with pytest.raises(GrowthError,
                       match='preserve growth is exact only for the l2_gelu and gelu_l2 norms, and this layer uses '
                             'pattention_norm=softmax'):
        grow_pattention(Pattention(8, 8, 8, norm='softmax'), 16)


@pytest.mark.parametrize('opt_name', ['adamw', 'lamb', 'sgd'])
def test_optimizer_growth_keeps_old_state_and_bounds_new_first_update(opt_name):
    from timm.optim import create_optimizer_v2
    model = trained_small_model()
    opt = create_optimizer_v2(model, opt_name, lr=1e-3, weight_decay=0.0, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(20):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    key = model.blocks[0].ffn.key_tokens
    old_state = {k: v.clone() for k, v in opt.state[key].items() if torch.is_tensor(v)}
    pairs = grow_model(model, attn_tokens=256, ffn_tokens=1024)
    grow_optimizer(opt, pairs)
    new_key = model.blocks[0].ffn.key_tokens
    assert key not in opt.state and new_key in opt.state
    assert sum(p is new_key for g in opt.param_groups for p in g['params']) == 1
    for k, v in old_state.items():
        grown = opt.state[new_key][k]
        if v.shape == key.shape:
            torch.testing.assert_close(grown[:768], v, rtol=0, atol=0)
            assert grown.shape[0] == 1024
        else:
            torch.testing.assert_close(grown, v)  # the step count is kept
    before = new_key.detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    delta = (new_key.detach() - before).abs()
    # the new rows' first update is no larger than the old rows' typical one
    assert delta[768:].max().item() <= delta[:768].abs().max().item() + 1e-12
    assert delta[768:].max().item() <= 1e-3 * 1.01


def _timm_checkpoint(path, model, arch='tokenformer_vit_tiny', ema=True):
    ckpt = {'state_dict': model.state_dict(), 'arch': arch, 'epoch': 3,
            'optimizer': torch.optim.AdamW(model.parameters()).state_dict(), 'version': 2}
    if ema:
        ckpt['state_dict_ema'] = copy.deepcopy(model).state_dict()
    torch.save(ckpt, path)


def test_grow_cli_output_loads_strictly_and_computes_the_same(tmp_path, capsys):
    model = trained_small_model().eval()
    src, out, hf = tmp_path / 'in.pth.tar', tmp_path / 'out.pth.tar', tmp_path / 'hf'
    _timm_checkpoint(src, model)
    rc = grow_main(['--checkpoint', str(src), '--attn-tokens', '256', '--ffn-tokens', '1024',
                    '--output', str(out), '--hf-dir', str(hf)])
    printed = capsys.readouterr().out
    assert rc == 0 and 'dropped optimizer' in printed and 'validate.py' in printed and '--model-kwargs' in printed
    ckpt = torch.load(out, weights_only=True)
    assert ckpt['growth_history'][-1]['attn_tokens'] == [192, 256] and 'optimizer' not in ckpt
    grown = timm.create_model('tokenformer_vit_tiny', attn_tokens=256, ffn_tokens=1024, checkpoint_path=str(out),
                              **SMALL).eval()
    rebuilt = timm.create_model(f'local-dir:{hf}', pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    assert (grown(x) - model(x)).abs().max().item() <= 1e-5
    assert (rebuilt(x) - model(x)).abs().max().item() <= 1e-5


def test_grow_cli_reads_bare_and_safetensors_state_dicts(tmp_path):
    from safetensors.torch import save_file
    model = small_model()
    torch.save(model.state_dict(), tmp_path / 'bare.pth')
    save_file(model.state_dict(), str(tmp_path / 'm.safetensors'))
    for src in ('bare.pth', 'm.safetensors'):
        out = tmp_path / (src + '.grown')
        assert grow_main(['--checkpoint', str(tmp_path / src), '--ffn-tokens', '900', '--output', str(out)]) == 0
        assert torch.load(out, weights_only=True)['state_dict']['blocks.1.ffn.key_tokens'].shape == (900, 192)


@pytest.mark.parametrize('args,message', [
    (['--attn-tokens', '100'], 'Cannot shrink attn_tokens from 192 to 100'),
    (['--mode', 'double'], "Unknown growth mode 'double'"),
    (['--mode', 'ramp'], 'moves τ during training'),
    (['--checkpoint-override', 'missing.pth'], 'does not exist'),
    (['--checkpoint-override', 'not_tokenformer.pth'], 'is not a Tokenformer-ViT checkpoint'),
])
def test_grow_cli_bad_requests_exit_2_with_one_sentence_and_write_nothing(tmp_path, args, message):
    model = small_model()
    src = tmp_path / 'in.pth.tar'
    _timm_checkpoint(src, model, ema=False)
    torch.save(timm.create_model('resnet18', num_classes=2).state_dict(), tmp_path / 'not_tokenformer.pth')
    if args[0] == '--checkpoint-override':
        src, args = tmp_path / args[1], []
    out = tmp_path / 'out.pth.tar'
    proc = subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint', str(src),
                           '--output', str(out),
                           *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() and not list(tmp_path.glob('out.pth.tar*'))


def test_timm_script_runs_a_script_as_python_would(tmp_path):
    script = tmp_path / 'make.py'
    (tmp_path / 'helper.py').write_text('WIDTH = 192\n')
    script.write_text(
        'import sys, timm, helper\n'
        'assert __name__ == "__main__"\n'
        'm = timm.create_model(sys.argv[1], img_size=32, patch_size=8, depth=1)\n'
        'print("ok", sys.argv[0].endswith("make.py"), m.embed_dim == helper.WIDTH, sys.argv[2:])\n')
    proc = subprocess.run([sys.executable, '-m', 'tokenformer_vit.timm_script', str(script), 'tokenformer_vit_tiny',
                           '--flag', 'x'], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok True True ['--flag', 'x']"
    missing = subprocess.run([sys.executable, '-m', 'tokenformer_vit.timm_script', str(tmp_path / 'validate.py')],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "clone timm's repository" in missing.stderr


def test_grow_cli_reads_a_compiled_models_checkpoint_and_writes_timm_keys(tmp_path):
    model = small_model(seed=3).eval()
    src, out = tmp_path / 'compiled.pth.tar', tmp_path / 'out.pth.tar'
    torch.save({'state_dict': {'_orig_mod.' + k: v for k, v in model.state_dict().items()},
                'arch': 'tokenformer_vit_tiny'}, src)
    assert grow_main(['--checkpoint', str(src), '--attn-tokens', '256', '--output', str(out)]) == 0
    state = torch.load(out, weights_only=True)['state_dict']
    assert not any(k.startswith('_orig_mod.') for k in state)
    grown = timm.create_model('tokenformer_vit_tiny', attn_tokens=256, checkpoint_path=str(out), **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    assert (grown(x) - model(x)).abs().max().item() <= 1e-5


def test_grow_cli_rebuilds_a_model_of_another_width_and_head_count_from_its_recorded_kwargs(tmp_path, capsys):
    kwargs = dict(SMALL, embed_dim=48, num_heads=2)
    model = timm.create_model('tokenformer_vit_tiny', **kwargs).eval()
    src, out, hf = tmp_path / 'in.pth.tar', tmp_path / 'out.pth.tar', tmp_path / 'hf'
    torch.save({'state_dict': model.state_dict(), 'arch': 'tokenformer_vit_tiny',
                'args': {'model_kwargs': {'embed_dim': 48, 'num_heads': 2}}}, src)
    assert grow_main(['--checkpoint', str(src), '--ffn-tokens', '800', '--output', str(out), '--hf-dir', str(hf)]) == 0
    printed = capsys.readouterr().out
    assert ' embed_dim=48 num_heads=2' in printed
    rebuilt = timm.create_model(f'local-dir:{hf}', pretrained=True).eval()
    assert rebuilt.blocks[0].attn.num_heads == 2
    x = torch.randn(2, 3, 32, 32)
    assert (rebuilt(x) - model(x)).abs().max().item() <= 1e-5
    # the validate command's --model-kwargs build a model that loads the checkpoint strictly
    line = next(l for l in printed.splitlines() if '--checkpoint' in l)
    words = line.split('--model-kwargs ')[1].split(' --')[0].split()
    made = timm.create_model('tokenformer_vit_tiny', num_classes=10, **{k: int(v) for k,
                                                                        v in (w.split('=') for w in words)},
                             checkpoint_path=str(out))
    assert made.blocks[0].ffn.num_tokens == 800


def test_grow_cli_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / 'in.pth.tar'
    _timm_checkpoint(src, small_model(), ema=False)
    before = src.read_bytes()
    proc = subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint', str(src),
                           '--output', str(src),
                           '--ffn-tokens', '900'], capture_output=True, text=True)
    assert proc.returncode == 2 and 'is the checkpoint being grown' in proc.stderr
    assert src.read_bytes() == before
    (tmp_path / 'hf').write_text('a file')
    proc = subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint', str(src),
                           '--output',
                           str(tmp_path / 'out.pth.tar'), '--hf-dir', str(tmp_path / 'hf')], capture_output=True,
                           text=True)
    assert proc.returncode == 2 and '--hf-dir' in proc.stderr and 'is a file' in proc.stderr
    assert (tmp_path / 'hf').read_text() == 'a file' and not (tmp_path / 'out.pth.tar').exists()


def test_loading_a_checkpoint_of_other_token_counts_names_the_kwargs_to_pass(tmp_path):
    grown = small_model()
    grow_model(grown, attn_tokens=256, ffn_tokens=1024)
    torch.save({'state_dict': grown.state_dict()}, tmp_path / 'grown.pth.tar')
    with pytest.raises(RuntimeError, match='pass attn_tokens=256, ffn_tokens=1024 to create_model'):
        timm.create_model('tokenformer_vit_tiny', checkpoint_path=str(tmp_path / 'grown.pth.tar'), **SMALL)


def test_a_grown_training_state_has_the_same_new_tokens_in_model_and_ema_and_restarts_a_restart_schedule():
    from timm.utils import ModelEmaV3
    from tokenformer_vit.engine import LRSchedule, build_optimizer
    from tokenformer_vit.growth import grow_training_state
    model = trained_small_model()
    ema = ModelEmaV3(model, decay=0.9)
    opt = build_optimizer(model, 1e-3, 0.05)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    schedules = {p: LRSchedule(opt, total_steps=20, warmup_steps=2, warmup_lr=1e-6, min_lr=1e-5, policy=p,
                               planned=[10]) for p in ('continue', 'restart')}
    for s in schedules.values():
        s.step_update(10)
    record = grow_training_state(model, 256, 1024, 'preserve', optimizer=opt, ema=ema,
                                 scheduler=schedules['restart'], step=10, seed=3)
    assert record == dict(step=10, attn_tokens=[192, 256], ffn_tokens=[768, 1024], mode='preserve')
    for a, b in zip(model.parameters(), ema.module.parameters()):
        assert a.shape == b.shape
    value, ema_value = model.blocks[0].ffn.value_tokens, ema.module.blocks[0].ffn.value_tokens
    assert torch.equal(value[768:], ema_value[768:]) and value[768:].abs().sum() > 0  # the same new tokens
    grown_params = {id(p) for g in opt.param_groups for p in g['params']}
    assert id(value) in grown_params and opt.state[value]['exp_avg'].shape == value.shape
    assert schedules['restart'].state_dict()['starts'] == [0, 10]
    assert schedules['restart'].optimizer.param_groups[0]['lr'] == pytest.approx(1e-6)  # warmup again


def test_grow_cli_gives_the_ema_the_same_new_tokens_as_the_model(tmp_path):
    model = trained_small_model().eval()
    src, out = tmp_path / 'in.pth.tar', tmp_path / 'out.pth.tar'
    sd = model.state_dict()
    torch.save(dict(state_dict=sd, state_dict_ema={k: v.clone() for k, v in sd.items()}), src)
    assert grow_main(['--checkpoint', str(src), '--ffn-tokens', '1024', '--output', str(out)]) == 0
    ckpt = torch.load(out, weights_only=True)
    key = 'blocks.1.ffn.value_tokens'
    assert ckpt['state_dict'][key].shape[0] == 1024
    assert torch.equal(ckpt['state_dict'][key], ckpt['state_dict_ema'][key])


def test_ramp_growth_preserves_the_function_then_moves_tau_linearly_to_sqrt_n_and_stops_at_the_next_growth():
    from tokenformer_vit.growth import TauRamp, grow_training_state
    print('seed 0')
    model = trained_small_model()
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    history = [grow_training_state(model, 256, 1024, 'ramp', step=10, ramp_epochs=0.5)]  # 4 of 8 steps
    assert (model(x) - before).abs().max().item() <= 1e-5  # at the growth: preserve
    old = dict(attn=192 ** 0.5, ffn=768 ** 0.5)  # tiny's counts, τ kept from them
    assert history[0]['tau_ramp'] == dict(epochs=0.5, attn=[pytest.approx(old['attn']), 16.0],
                                          ffn=[pytest.approx(old['ffn']), 32.0])
    ramp = TauRamp(model, history, steps_per_epoch=8)
    for step, frac in ((10, 0.0), (11, 0.25), (13, 0.75), (14, 1.0)):
        ramp.step_update(step)
        assert model.blocks[1].attn.v.tau.item() == pytest.approx(old['attn'] + (16 - old['attn']) * frac, rel=1e-6)
        assert model.blocks[0].ffn.tau.item() == pytest.approx(old['ffn'] + (32 - old['ffn']) * frac, rel=1e-6)
    history.append(grow_training_state(model, 400, 1024, 'preserve', step=20))
    model.blocks[0].attn.q.tau.fill_(3.0)
    ramp.step_update(12)  # the later growth ended the ramp: nothing is set
    assert model.blocks[0].attn.q.tau.item() == 3.0


def test_an_initial_checkpoint_grown_in_ramp_mode_ramps_from_its_tau_and_other_modes_allow_mixed_taus(tmp_path):
    from tokenformer_vit.config import study_config
    from tokenformer_vit.growth import TauRamp, grow_training_state
    from tokenformer_vit.run import build_model
    print('seed 0')
    small = small_model(attn_tokens=16, ffn_tokens=64)
    _timm_checkpoint(tmp_path / 'small.pth.tar', small, ema=False)
    config = study_config(model='tokenformer_vit_tiny',
                          model_kwargs=dict(img_size=32, patch_size=8, depth=2, attn_tokens=64, ffn_tokens=256),
                          initial_checkpoint=str(tmp_path / 'small.pth.tar'), grow_mode='ramp', tau_ramp_epochs=2.0)
    model, history = build_model(config, 10)
    assert history[0]['tau_ramp'] == dict(epochs=2.0, attn=[4.0, 8.0], ffn=[8.0, 16.0])
    assert history[0]['source'] and history[0]['epoch'] == history[0]['step'] == 0
    assert model.blocks[0].attn.q.tau.item() == 4.0  # kept at the growth
    TauRamp(model, history, steps_per_epoch=5).step_update(5)  # halfway through its 10 steps
    assert model.blocks[0].attn.q.tau.item() == 6.0 and model.blocks[1].ffn.tau.item() == 12.0
    other = small_model()
    other.blocks[0].attn.q.tau.fill_(3.0)  # τ that differ within a kind: fine unless τ must ramp
    grow_training_state(other, 256, 1024, 'preserve')
    with pytest.raises(GrowthError, match='different τ'):
        grow_training_state(other, 300, 1024, 'ramp')


def test_grow_cli_refuses_an_hf_dir_that_holds_a_run_and_leaves_every_file_of_it(tmp_path, capsys):
    # before: --hf-dir pointed at a run folder deleted its checkpoints, summary and curves
    run = tmp_path / 'runs' / 'x'
    run.mkdir(parents=True)
    _timm_checkpoint(run / 'last.pth.tar', small_model())
    for name, data in (('best.pth.tar', b'best'), ('summary.csv', b'epoch\n0\n'), ('curves.png', b'png')):
        (run / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    rc = grow_main(['--checkpoint', str(run / 'last.pth.tar'), '--attn-tokens', '256', '--output',
                    str(tmp_path / 'g.pth.tar'), '--hf-dir', str(run)])
    err = capsys.readouterr().err
    assert rc == 2 and 'holds files the grow command did not write (best.pth.tar, curves.png, last.pth.tar)' in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not (tmp_path / 'g.pth.tar').exists() and sorted(p.name for p in run.parent.iterdir()) == ['x']


def test_grow_cli_replaces_only_an_hf_dir_it_wrote_and_both_outputs_hold_the_state_dict(tmp_path, capsys):
    # the folder and the checkpoint's validate command evaluate the same weights (before: the folder
    # held the EMA, the command the state_dict); a folder the command wrote is replaced, no other
    model, ema = small_model(seed=1).eval(), small_model(seed=2)
    src, hf = tmp_path / 'in.pth.tar', tmp_path / 'hf'
    torch.save({'state_dict': model.state_dict(), 'state_dict_ema': ema.state_dict(), 'arch': 'tokenformer_vit_tiny'},
               src)
    x = torch.randn(2, 3, 32, 32)
    for i, attn in enumerate((256, 320)):
        out = tmp_path / f'out{i}.pth.tar'
        assert grow_main(['--checkpoint', str(src), '--attn-tokens', str(attn), '--output', str(out),
                          '--hf-dir', str(hf)]) == 0
        rebuilt = timm.create_model(f'local-dir:{hf}', pretrained=True).eval()
        assert rebuilt.attn_tokens == attn and (rebuilt(x) - model(x)).abs().max().item() <= 1e-5
        assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary folder left
    assert 'both evaluate the state_dict' in capsys.readouterr().out
    (hf / 'notes.txt').write_text('mine')
    assert grow_main(['--checkpoint', str(src), '--attn-tokens', '384', '--output', str(tmp_path / 'o.pth.tar'),
                      '--hf-dir', str(hf)]) == 2
    assert (hf / 'notes.txt').read_text() == 'mine' and 'holds files the grow command did not write (notes.txt)' \
        in capsys.readouterr().err


def test_checkpoint_growth_in_paper_mode_keeps_the_tau_of_layers_whose_count_stays(tmp_path):
    # as in-memory growth does (before: the grow command reset every τ to √n, grown or not)
    model = small_model()
    with torch.no_grad():
        for block in model.blocks:
            block.ffn.tau.fill_(3.0)
    src, out = tmp_path / 'in.pth.tar', tmp_path / 'out.pth.tar'
    _timm_checkpoint(src, model, ema=False)
    assert grow_main(['--checkpoint', str(src), '--attn-tokens', '256', '--mode', 'paper', '--output', str(out)]) == 0
    on_disk = torch.load(out, weights_only=True)['state_dict']
    grow_model(model, 256, None, 'paper', torch.Generator().manual_seed(0))
    in_memory = model.state_dict()
    taus = {k: v.item() for k, v in on_disk.items() if k.endswith('tau')}
    assert taus == {k: v.item() for k, v in in_memory.items() if k.endswith('tau')}
    assert taus['blocks.0.ffn.tau'] == 3.0 and taus['blocks.0.attn.q.tau'] == 16.0


def test_grow_cli_names_a_model_typo_writes_safetensors_and_reads_timms_own_train_checkpoints(tmp_path, capsys):
    import argparse
    model = small_model(seed=4).eval()
    src = tmp_path / 'timm_train.pth.tar'
    # timm's train.py pickles its argparse namespace of flags into every checkpoint
    torch.save({'state_dict': model.state_dict(), 'arch': 'tokenformer_vit_tiny', 'epoch': 1,
                'args': argparse.Namespace(model='tokenformer_vit_tiny', model_kwargs={}, lr=0.1)}, src)
    rc = grow_main(['--checkpoint', str(src), '--model', 'tokenformer_vit_tinny', '--attn-tokens', '256',
                    '--output', str(tmp_path / 'a.pth.tar')])
    assert rc == 2 and '--model tokenformer_vit_tinny is not a timm model' in capsys.readouterr().err
    assert not (tmp_path / 'a.pth.tar').exists()
    out = tmp_path / 'grown.safetensors'
    assert grow_main(['--checkpoint', str(src), '--attn-tokens', '256', '--output', str(out)]) == 0
    grown = timm.create_model('tokenformer_vit_tiny', attn_tokens=256, checkpoint_path=str(out), **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    assert (grown(x) - model(x)).abs().max().item() <= 1e-5
    before = out.read_bytes()  # an existing --output is replaced only when asked
    assert grow_main(['--checkpoint', str(src), '--attn-tokens', '320', '--output', str(out)]) == 2
    assert f'--output {out} exists: pass a new file name, or --overwrite' in capsys.readouterr().err
    assert out.read_bytes() == before
    assert grow_main(['--checkpoint', str(src), '--attn-tokens', '320', '--output', str(out), '--overwrite']) == 0


def test_timm_script_given_a_folder_names_the_script_to_pass(tmp_path, capsys):
    from tokenformer_vit.timm_script import main as script_main
    assert script_main([str(tmp_path)]) == 2
    assert f'{tmp_path} is a folder: pass the path of the script in it, e.g. {tmp_path / "validate.py"}' \
        in capsys.readouterr().err
