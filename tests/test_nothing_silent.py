"""Nothing silent (issue 32): zero is never a result, a job stops with a sentence when its shards are
replaced under it, printed commands reproduce what they describe, every check that can run before
the first step does, library errors become sentences, Ctrl-C saves, and exact resume holds over
shards with undecodable samples."""
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from job import REPO, one_sentence, run_cli, train, weights


def summary_rows(out):
    lines = (out / 'summary.csv').read_text().splitlines()
    return [dict(zip(lines[0].split(','), line.split(','))) for line in lines[1:]]


# ----------------------------------------------------------------------------------------------------------------
# zero is never a result


def test_empty_validation_shards_stop_the_job_and_the_trained_epoch_is_evaluated_on_resume(shards, tmp_path, capsys):
    data = tmp_path / 'wds'
    shutil.copytree(shards, data)
    info = json.loads((data / '_info.json').read_text())
    saved = {f: (data / f).read_bytes() for f in info['splits']['validation']['filenames']}
    for f in saved:  # before: "top-1 0.00%" every epoch, "done: best top-1 0.00%", exit 0
        (data / f).write_bytes(b'')
    code, err = run_cli(['--data-dir', data, '--output', tmp_path / 'run', '--epochs', 2], capsys)
    assert code == 2 and "evaluated 0 of the 16 samples of split 'validation'" in one_sentence(err), err
    ckpt = weights(tmp_path / 'run' / 'last.pth.tar')[0]
    assert ckpt['step'] == 6 and ckpt['unevaluated']['epoch'] == 0  # the trained epoch is kept
    assert not (tmp_path / 'run' / 'summary.csv').exists()  # and no 0.00% was written anywhere
    for f, content in saved.items():
        (data / f).write_bytes(content)
    res = train('--data-dir', data, '--output', tmp_path / 'run', '--epochs', 2)
    rows = summary_rows(tmp_path / 'run')
    assert [r['epoch'] for r in rows] == ['0', '1'] and 'epoch 0: loss' in res.stdout


def test_eval_only_over_no_images_is_an_error_not_one_image(shards, tmp_path, capsys):
    train('--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 1)
    data = tmp_path / 'wds'
    shutil.copytree(shards, data)
    for f in json.loads((data / '_info.json').read_text())['splits']['validation']['filenames']:
        (data / f).write_bytes(b'')
    code, err = run_cli(['--data-dir', data, '--output', tmp_path / 'run', '--epochs', 1, '--eval-only'], capsys)
    assert code == 2 and 'evaluated 0 of the 16 samples' in one_sentence(err), err


def test_a_validation_split_rebuilt_while_the_job_runs_stops_it_and_a_rerun_goes_on(shards, tmp_path):
    # real processes: make_shards rebuilds the validation split while the job trains; the job stops with
    # a sentence at its next evaluation (before: every later epoch evaluated 0 images at 0.00%, exit 0)
    data = tmp_path / 'wds'
    shutil.copytree(shards, data)
    flags = ['--data-dir', data, '--output', tmp_path / 'run', '--epochs', 40]
    proc = train(*flags, popen=dict(cwd=tmp_path))
    for line in proc.stdout:
        if line.startswith('epoch 0:'):
            break
    rebuild = subprocess.run([sys.executable, '-m', 'tokenformer_vit.make_shards', '--input',
                              str(shards.parent / 'images' / 'validation'), '--split', 'validation', '--output',
                              str(data), '--shard-size', '4', '--name', 'wds'], capture_output=True, text=True)
    assert rebuild.returncode == 0, rebuild.stderr
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    # at the next evaluation's start, or in its middle when the old shards go before it has read them
    assert ("split 'validation' of" in out and 'was rebuilt while this job ran' in out) or \
        ('is gone (removed, or its split rebuilt while this job ran)' in out), out
    assert out.count('error:') == 1 and 'Traceback' not in out
    epochs = [r['epoch'] for r in summary_rows(tmp_path / 'run')]
    ckpt = weights(tmp_path / 'run' / 'last.pth.tar')[0]
    assert ckpt['step'] == 6 * (len(epochs) + (ckpt['unevaluated'] is not None))  # no trained step was lost
    res = train(*flags[:4], '--epochs', 40, '--eval-only')
    assert 'model: top-1' in res.stdout and '(16 images)' in res.stdout


# ----------------------------------------------------------------------------------------------------------------
# printed commands reproduce what they describe (tests/validate_stand_in.py: timm's validate.py's calls)


def run_printed(command: str, cwd: Path) -> dict:
    """Run a printed validate.py command in `cwd`, which holds the stand-in as validate.py."""
    shutil.copy(REPO / 'tests' / 'validate_stand_in.py', cwd / 'validate.py')
    res = subprocess.run(shlex.split(command), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, command + '\n' + res.stderr
    words = res.stdout.split()
    return {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}


def test_the_printed_validate_command_gives_the_jobs_figures_for_a_softmax_model_of_depth_1(shards, tmp_path):
    # before: the command named only kwargs that weight shapes record: validate.py built an l2_gelu model
    # (50.0% where the job measured 25.0%), failed to load depth=1, and broke on a path with a space
    out = tmp_path / 'a run'
    res = train('--data-dir', shards, '--output', out, '--epochs', 2, '--model-kwargs', 'depth=1', 'embed_dim=32',
                'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8', 'pattention_norm=softmax',
                '--crop-pct', 0.8)
    command = res.stdout.strip().splitlines()[-1].strip()
    assert 'pattention_norm=softmax' in command and 'depth=1' in command and "'" + str(out) in command
    figures = run_printed(command, tmp_path)
    row = summary_rows(out)[-1]
    assert figures['images'] == 16 and figures['top-1'] == pytest.approx(float(row['eval_top1']))
    assert figures['loss'] == pytest.approx(float(row['eval_loss']), abs=1e-4)
    # the same command without the norm gives another function: the comparison can tell
    other = run_printed(command.replace(' pattention_norm=softmax', ''), tmp_path)
    assert abs(other['loss'] - figures['loss']) > 1e-3


def test_the_grow_commands_printed_validate_command_gives_the_grown_models_figures(shards, tmp_path):
    import timm
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, attn_tokens=16, ffn_tokens=32, patch_size=8,
                  pattention_norm='gelu_l2')
    torch.manual_seed(0)
    model = timm.create_model('tokenformer_vit_tiny', img_size=32, num_classes=4, **kwargs)
    small = tmp_path / 'small.pth.tar'  # as the job saves it: the weights, the arch and the flags
    torch.save(dict(state_dict=model.state_dict(), arch='tokenformer_vit_tiny', args=dict(model_kwargs=kwargs)), small)
    grown = tmp_path / 'grown model.pth.tar'
    res = subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint', str(small),
                          '--attn-tokens', '24', '--ffn-tokens', '48', '--mode', 'paper', '--output', str(grown)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    command = next(line.strip() for line in res.stdout.splitlines() if 'validate.py' in line and '--checkpoint' in line)
    command = command.replace('--data-dir DATA', f'--data-dir {shards} --dataset wds/wds --device cpu')
    figures = run_printed(command, tmp_path)
    ev = train('--data-dir', shards, '--output', tmp_path / 'eval', '--eval-only', '--initial-checkpoint', grown,
               '--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=24', 'ffn_tokens=48',
               'patch_size=8', 'pattention_norm=gelu_l2')
    line = next(line for line in ev.stdout.splitlines() if line.startswith('model: top-1'))
    assert line.startswith(f"model: top-1 {figures['top-1']:.2f}%"), (line, figures)
    assert abs(float(line.split('loss ')[1].split()[0]) - figures['loss']) < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# checks before the first step, and library errors as sentences


@pytest.mark.parametrize('flags,message', [
    (['--grow', '1:24:48', '--grow-mode', 'preserve'], 'preserve growth is exact only for the l2_gelu and gelu_l2 '
                                                        'norms, and --grow 1:24:48 of --model tokenformer_vit_tiny '
                                                        'uses '
                                                        'pattention_norm=softmax'),
    (['--grow', '1:24:48:ramp'], 'ramp growth is exact only for the l2_gelu and gelu_l2 norms'),
])
def test_an_exact_growth_of_a_softmax_model_is_refused_before_the_first_step(shards, tmp_path, capsys, flags, message):
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 2, '--model-kwargs',
                         'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8',
                         'pattention_norm=softmax', *flags], capsys)
    assert code == 2 and message in one_sentence(err), err
    assert not (tmp_path / 'run').exists()


def test_the_grow_command_refuses_preserve_mode_on_a_softmax_checkpoint(tmp_path):
    # before: exit 0, "(preserve mode)", and the logits moved by 0.16
    import timm
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, attn_tokens=16, ffn_tokens=32, patch_size=8,
                  pattention_norm='softmax')
    model = timm.create_model('tokenformer_vit_tiny', img_size=32, num_classes=4, **kwargs)
    torch.save(dict(state_dict=model.state_dict(), arch='tokenformer_vit_tiny', args=dict(model_kwargs=kwargs)),
               tmp_path / 'softmax.pth.tar')
    res = subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint',
                          str(tmp_path / 'softmax.pth.tar'),
                          '--attn-tokens', '24', '--output', str(tmp_path / 'g.pth.tar')], capture_output=True,
                          text=True)
    assert res.returncode == 2 and 'softmax.pth.tar uses pattention_norm=softmax' in res.stderr, res.stderr
    assert not (tmp_path / 'g.pth.tar').exists()


@pytest.mark.parametrize('flags,message', [
    (['--model', 'vit_tiny_patch16_224', '--model-kwargs', '--initial-checkpoint', 'CKPT'],
     '--initial-checkpoint needs a Tokenformer-ViT; --model vit_tiny_patch16_224 has no parameter tokens'),
    (['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8',
      'pattention_impl=triton'], 'is a speed switch, not a model argument: pass --pattention-impl instead'),
    (['--nodes', 2], '--nodes takes effect only with --submit'),
    (['--submit', '--cluster', 'local', '--nodes', 2], '--cluster local runs on this machine alone'),
    (['--submit', '--cluster', 'local', '--job-dir', 'FILE'], 'is a file: pass a folder for submitit'),
    (['--tau-ramp-epochs', 3], '--tau-ramp-epochs 3.0 takes effect only with ramp growth'),
])
def test_flags_that_cannot_act_are_refused_before_the_folder_is_touched(shards, tmp_path, capsys, monkeypatch, flags,
                                                                         message):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    (tmp_path / 'file').write_text('x')
    torch.save({'state_dict': {}}, tmp_path / 'c.pth')
    flags = [{'FILE': tmp_path / 'file', 'CKPT': tmp_path / 'c.pth'}.get(f, f) for f in flags]
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 1, *flags], capsys)
    assert code == 2 and message in one_sentence(err), err
    assert not (tmp_path / 'run').exists()  # no .lock, no config.yaml, no folder


def test_tensorboard_without_its_package_is_refused_before_the_folder_is_touched(shards, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'tensorboard' else real(name, *a))
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 1, '--tensorboard'], capsys)
    assert code == 2 and '--tensorboard needs the tensorboard package' in one_sentence(err)
    assert not (tmp_path / 'run').exists()


SMALL = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8, img_size=32)  # the model of job.TINY


def _checkpoint(path, num_classes=4, **kwargs):
    """A Tokenformer-ViT state dict saved as a bare checkpoint: job.TINY's model unless `kwargs` say."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model('tokenformer_vit_tiny', num_classes=num_classes,
                              **{**SMALL, 'attn_tokens': 16, 'ffn_tokens': 32, **kwargs})
    torch.save({'state_dict': model.state_dict()}, path)
    return path


SOFTMAX_24 = ['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=24', 'ffn_tokens=40',
              'patch_size=8', 'pattention_norm=softmax', '--grow-mode', 'preserve']


@pytest.mark.parametrize('kwargs,flags,message', [
    (dict(embed_dim=48), [], 'does not fit --model tokenformer_vit_tiny'),
    (dict(attn_tokens=24, ffn_tokens=40), [], 'holds attn_tokens=24, ffn_tokens=40, more than --model '
                                              'tokenformer_vit_tiny with --model-kwargs'),
    (dict(pattention_norm='softmax'), SOFTMAX_24, 'preserve growth is exact only for the l2_gelu and gelu_l2 norms'),
])
def test_an_initial_checkpoint_that_cannot_start_the_run_is_refused_before_the_shards_are_built(tmp_path, capsys,
                                                                                             monkeypatch, kwargs,
                                                                                             flags, message):
    # before: read when the model was built, after --shards-from had written the data set (hours on ImageNet)
    import tokenformer_vit.make_shards as writer
    built = []
    monkeypatch.setattr(writer, 'make_shards', lambda *a, **k: built.append(a) or 1 / 0)
    ckpt = _checkpoint(tmp_path / 'c.pth', **kwargs)
    code, err = run_cli(['--data-dir', tmp_path / 'data', '--shards-from', 'fashion-mnist', '--output',
                         tmp_path / 'run', '--epochs', 1, '--initial-checkpoint', ckpt, *flags], capsys)
    assert code == 2 and message in one_sentence(err) and str(ckpt) in err, err
    assert built == [] and not (tmp_path / 'data').exists() and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('classes,extra,message', [
    (3, [], 'has a classifier of 3 classes and the model here has 4 (the classes of DATA): fine-tune it with '
            '--pretrained-path instead'),
    (6, [], 'has a classifier of 6 classes and the model here has 4 (the classes of DATA): pass --num-classes 6.'),
    (3, ['--eval-only'], 'evaluate it on the data it was trained on.'),
    (6, ['--num-classes', 5], 'the model here has 5 (--num-classes): pass --num-classes 6.'),
])
def test_an_initial_checkpoint_of_another_class_count_is_one_sentence_naming_the_fix(shards, tmp_path, capsys,
                                                                                     classes, extra, message):
    # before: "does not fit --model ... (size mismatch for head.weight ...): pass the model and kwargs it was trained
    # with", which names neither the class count nor the fix
    ckpt = _checkpoint(tmp_path / 'c.pth', num_classes=classes)
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 1, '--initial-checkpoint',
                         ckpt, *extra], capsys)
    assert code == 2 and message.replace('DATA', str(shards)) in one_sentence(err), err


def test_eval_only_of_a_run_trained_with_more_classes_names_its_num_classes(shards, tmp_path, capsys):
    # before: a size-mismatch sentence for head.weight that named neither the class count nor the fix
    out = tmp_path / 'run'
    train('--data-dir', shards, '--output', out, '--epochs', 1, '--num-classes', 6)
    code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 1, '--eval-only'], capsys)
    assert code == 2 and f'{out / "last.pth.tar"} has a classifier of 6 classes and the model here has 4' in \
        one_sentence(err) and 'pass --num-classes 6.' in err, err


def test_an_initial_checkpoint_of_more_classes_than_the_data_is_evaluated_with_its_num_classes(shards, tmp_path,
                                                                                             capsys):
    ckpt = _checkpoint(tmp_path / 'c.pth', num_classes=6)
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--eval-only', '--initial-checkpoint',
                         ckpt, '--num-classes', 6], capsys)
    assert code == 0, err


def test_yaml_values_are_read_as_a_user_means_them(tmp_path):
    from tokenformer_vit.config import parse_args
    cfg = tmp_path / 'c.yaml'
    # YAML 1.1: 8e-2 a string, 2:16:32 the number 8192 (base 60), ~/x a folder named "~"
    cfg.write_text('\ufeffblr: 8e-2\nepochs: 4\ngrow: 2:16:32\noutput: ~/runs/x\n'
                   'model_kwargs: {depth: 2, drop_rate: 5e-2, attn_tokens: 8, ffn_tokens: 16}\n', encoding='utf-8')
    args = parse_args(['--config', str(cfg), '--data-dir', 'd', '--model', 'tokenformer_vit_tiny'])
    assert args.blr == 0.08 and str(args.grow) == '2:16:32'
    assert args.model_kwargs == {'depth': 2, 'drop_rate': 0.05, 'attn_tokens': 8, 'ffn_tokens': 16}
    assert args.output == os.path.expanduser('~/runs/x')
    cfg.write_text('config: other.yaml\n')
    with pytest.raises(SystemExit):
        parse_args(['--config', str(cfg), '--data-dir', 'd', '--output', 'o'])


def test_checkpoints_saved_from_ddp_or_compile_wrappers_load(shards, tmp_path):
    # before: "does not fit" (the keys kept DDP's module. and torch.compile's _orig_mod. prefixes)
    from tokenformer_vit.checkpoint import read_checkpoint
    out = tmp_path / 'run'
    train('--data-dir', shards, '--output', out, '--epochs', 1)
    sd = weights(out / 'last.pth.tar')[1]
    for prefix in ('module.', '_orig_mod.', '_orig_mod.module.'):
        torch.save({'state_dict': {prefix + k: v for k, v in sd.items()}}, tmp_path / 'wrapped.pth')
        assert list(read_checkpoint(tmp_path / 'wrapped.pth')['state_dict']) == list(sd), prefix
    res = train('--data-dir', shards, '--output', tmp_path / 'eval', '--eval-only', '--initial-checkpoint',
                tmp_path / 'wrapped.pth')
    assert 'model: top-1' in res.stdout


def test_a_diverging_run_ends_with_a_sentence_naming_the_fix(shards, tmp_path, capsys):
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 2, '--lr', 1e12,
                         '--reprob', 0], capsys)
    assert code == 2 and 'lower --lr (or --blr) or set --clip-grad' in one_sentence(err), err


def test_ctrl_c_saves_at_a_step_and_the_resumed_run_matches(shards, tmp_path):
    flags = ['--data-dir', shards, '--epochs', 2, '--log-every', 1]
    train(*flags, '--output', tmp_path / 'straight')
    proc = train(*flags, '--output', tmp_path / 'stopped', popen=dict(cwd=tmp_path))
    for line in proc.stdout:
        if line.startswith('epoch 0:'):
            break
    proc.send_signal(signal.SIGINT)  # before: a traceback and no save
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT and 'Traceback' not in out, out
    assert 'signal 2: saved' in out
    train(*flags, '--output', tmp_path / 'stopped')
    a, b = weights(tmp_path / 'straight' / 'last.pth.tar'), weights(tmp_path / 'stopped' / 'last.pth.tar')
    for k, v in a[1].items():
        assert torch.equal(v, b[1][k]), k


# ----------------------------------------------------------------------------------------------------------------
# exact resume over shards from another writer, with undecodable samples


def foreign_shards(root: Path, seed: int = 0) -> Path:
    """Training shards written as another tool writes them: 6 shards of 9 samples, each with one corrupt
    JPEG and one image above --max-image-pixels 4000 (both skipped by the loader), and clean validation
    shards; _info.json counts every sample."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    names, lengths = [], []
    for s in range(6):
        name = f'other-train-{s:04d}.tar'
        with tarfile.open(root / name, 'w', format=tarfile.USTAR_FORMAT) as tar:
            for i in range(9):
                label = int(rng.integers(0, 4))
                if i == 3:
                    jpg = b'\xff\xd8\xff\xe0 corrupt'
                else:
                    side = 80 if i == 6 else 36
                    a = np.zeros((side, side, 3), np.uint8)
                    a[..., label % 3] = 60 + 60 * (label // 3) + rng.integers(0, 40, (side, side), dtype=np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(a).save(buf, format='JPEG')
                    jpg = buf.getvalue()
                for ext, data in (('jpg', jpg), ('cls', str(label).encode())):
                    info = tarfile.TarInfo(f's{s}_{i}.{ext}')
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        names.append(name)
        lengths.append(9)
    return root, dict(name='train', num_samples=54, filenames=names, shard_lengths=lengths)


def test_kill_9_and_resume_over_shards_with_undecodable_samples_gives_the_uninterrupted_run(shards, tmp_path):
    # before: the resume skip counted raw samples as images; 28 of 38 tensors differed after kill -9
    data, entry = foreign_shards(tmp_path / 'wds')
    info = json.loads((shards / '_info.json').read_text())
    for f in info['splits']['validation']['filenames']:
        shutil.copy(shards / f, data / f)
    info['splits']['train'] = entry
    (data / '_info.json').write_text(json.dumps(info))
    flags = ['--data-dir', data, '--epochs', 2, '--workers', 2, '--max-image-pixels', 4000, '--save-every-steps', 1,
             '--batch-size', 4]
    straight = train(*flags, '--output', tmp_path / 'straight')
    assert 'could not be decoded' in straight.stderr or 'above the limit' in straight.stderr
    seed = 32
    print(f'seed={seed}')
    target = 12 + seed % 5  # a step inside epoch 1 (13 steps an epoch)
    proc = train(*flags, '--output', tmp_path / 'killed', popen=dict(cwd=tmp_path))
    last = tmp_path / 'killed' / 'last.pth.tar'
    while proc.poll() is None:
        if last.exists():
            try:
                if torch.load(last, map_location='cpu', weights_only=True)['step'] >= target:
                    break
            except Exception:  # noqa: BLE001 - replaced while read
                pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = weights(last)[0]
    assert ckpt['step'] % 13 and ckpt['data_position'], ckpt['step']  # killed inside an epoch, positions recorded
    train(*flags, '--output', tmp_path / 'killed')
    a, b = weights(tmp_path / 'straight' / 'last.pth.tar'), weights(last)
    assert a[0]['step'] == b[0]['step']
    differ = [k for k, v in a[1].items() if not torch.equal(v, b[1][k])]
    assert not differ, f'{len(differ)} of {len(a[1])} tensors differ'


@pytest.mark.parametrize('workers,repeats', [(2, 1), (2, 2), (0, 3)])
def test_a_resumed_epoch_over_undecodable_samples_gives_exactly_the_batches_not_yet_trained(tmp_path, workers, repeats):
    # the loader alone: an epoch read straight, then resumed after each k batches from the position a
    # save would record (ShardStream.position), gives batches k.. of the straight epoch, bit for bit
    from test_data import shard_loader
    data, entry = foreign_shards(tmp_path / 'wds')
    (data / '_info.json').write_text(json.dumps(dict(name='other', splits=dict(train=entry))))
    loader = shard_loader(data, 'train', 4, True, workers=workers, max_pixels=4000, aug_repeats=repeats,
                          img_size=16, rand_augment=True)
    loader.dataset.set_epoch(0)
    straight = list(loader)
    stream = loader.dataset
    positions = {k: stream.position(k) for k in range(1, len(straight))}
    for k in (1, 2, 5, len(straight) - 1):
        stream.set_epoch(0, skip_batches=k, position=positions[k])
        rest = list(loader)
        assert len(rest) == len(straight) - k
        for (a, ta), (b, tb) in zip(straight[k:], rest):
            assert torch.equal(a, b) and torch.equal(ta, tb), k
