"""train.py, the training job (with distributed.py and cli.py): end to end on generated shards, DDP,
resume after kill -9 and after a signal, growth mid-run, refusals before the first step."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import tokenformer_vit  # noqa: F401
from job import REPO, TINY, one_sentence, run_cli, train, weights


def test_end_to_end_run_grows_evaluates_logs_and_writes_timm_checkpoints(shards, tmp_path):
    out = tmp_path / 'run'
    res = train('--data-dir', shards, '--output', out, '--epochs', 3, '--grow', '2:24:48')
    assert 'grew attn_tokens 16 -> 24, ffn_tokens 32 -> 48' in res.stdout
    for name in ('last.pth.tar', 'best.pth.tar', 'summary.csv', 'curves.png', 'config.yaml'):
        assert (out / name).is_file(), name
    rows = (out / 'summary.csv').read_text().splitlines()
    assert rows[0].startswith('epoch,step,train_loss,eval_loss,eval_top1,eval_top5') and len(rows) == 4
    assert [r.split(',')[-2:] for r in rows[1:]] == [['16', '32'], ['16', '32'], ['24', '48']]
    ckpt, sd = weights(out / 'last.pth.tar')
    assert ckpt['step'] == 18 and ckpt['epoch'] == 2 and ckpt['arch'] == 'tokenformer_vit_tiny'
    assert [g['attn_tokens'] for g in ckpt['growth_history']] == [[16, 24]] and isinstance(ckpt['args'], dict)
    import timm
    model = timm.create_model('tokenformer_vit_tiny', depth=2, embed_dim=32, num_heads=2, patch_size=8, img_size=32,
                              num_classes=4, attn_tokens=24, ffn_tokens=48, checkpoint_path=str(out / 'last.pth.tar'))
    assert model.blocks[0].ffn.key_tokens.shape == (48, 32)
    assert 'validate.py --model tokenformer_vit_tiny --model-kwargs attn_tokens=24 ffn_tokens=48' in res.stdout
    ev = train('--data-dir', shards, '--output', out, '--epochs', 3, '--eval-only')
    top1 = f"{float(rows[-1].split(',')[4]):.2f}%"
    assert f'model: top-1 {top1}' in ev.stdout and '(16 images)' in ev.stdout
    # a new run started from this (smaller) checkpoint, grown to its model's token counts first
    grown = train('--data-dir', shards, '--output', tmp_path / 'from_init', '--epochs', 1, '--initial-checkpoint',
                  out / 'last.pth.tar', '--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=32',
                  'ffn_tokens=64', 'patch_size=8')
    history = weights(tmp_path / 'from_init' / 'last.pth.tar')[0]['growth_history']
    assert [(g['attn_tokens'], g['ffn_tokens']) for g in history] == [([24, 32], [48, 64])], grown.stdout
    # rerun of a finished job: resumes at the end, trains nothing and never grows again
    again = train('--data-dir', shards, '--output', out, '--epochs', 3, '--grow', '2:24:48')
    assert 'resumed from' in again.stdout and 'grew' not in again.stdout
    assert torch.equal(weights(out / 'last.pth.tar')[1]['blocks.0.ffn.value_tokens'], sd['blocks.0.ffn.value_tokens'])


def assert_same_run(a, b):
    """Two runs' last.pth.tar hold the same step, growth history, weights and EMA, bit for bit."""
    (ca, wa), (cb, wb) = weights(a), weights(b)
    assert ca['step'] == cb['step'] and ca['growth_history'] == cb['growth_history']
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), k
    for k, v in ca['state_dict_ema'].items():
        assert torch.equal(v, cb['state_dict_ema'][k]), k


@pytest.mark.parametrize('save_every_steps', [0, 1])
def test_kill_9_at_a_random_moment_after_a_save_then_restart_gives_the_uninterrupted_run(shards, tmp_path,
                                                                                        save_every_steps):
    # epoch saves only, or a save after every step too: either way the restart ends bit-identical
    seed = 1234 + save_every_steps
    print(f'seed={seed}')
    flags = ['--data-dir', shards, '--epochs', 4, '--grow', '2:24:48', '--save-every-steps', save_every_steps]
    train(*flags, '--output', tmp_path / 'straight')
    proc = train(*flags, '--output', tmp_path / 'killed', popen=dict(cwd=tmp_path))
    rng = random.Random(seed)
    last = tmp_path / 'killed' / 'last.pth.tar'
    while not last.exists() and proc.poll() is None:
        time.sleep(0.05)
    if save_every_steps:  # kill once a save past a random step, inside an epoch, is on disk
        target = rng.choice([s for s in range(7, 24) if s % 6])
        def optimizer_step():
            state = torch.load(last, map_location='cpu', weights_only=True)['optimizer']['state']
            return max(int(s['step']) for s in state.values())
        while proc.poll() is None and optimizer_step() < target:
            time.sleep(0.01)
    else:
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in a later epoch (or just after the end)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if save_every_steps:  # what was on disk at the kill records the step the optimizer had reached
        ckpt = weights(tmp_path / 'killed' / 'last.pth.tar')[0]
        steps = {int(s['step']) for s in ckpt['optimizer']['state'].values()}
        assert steps == {ckpt['step']}, (steps, ckpt['step'])
    res = train(*flags, '--output', tmp_path / 'killed')
    assert res.stdout.count('grew') <= 1
    assert weights(tmp_path / 'killed' / 'last.pth.tar')[0]['step'] == 24
    assert_same_run(tmp_path / 'straight' / 'last.pth.tar', tmp_path / 'killed' / 'last.pth.tar')


def test_a_step_save_records_the_step_the_optimizer_reached(shards, tmp_path):
    proc = train('--data-dir', shards, '--epochs', 2, '--save-every-steps', 4, '--output', tmp_path / 'run',
                 popen=dict(cwd=tmp_path))
    seen = set()
    while proc.poll() is None:
        path = tmp_path / 'run' / 'last.pth.tar'
        if path.exists():
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
            seen.add((ckpt['step'], *{int(s['step']) for s in ckpt['optimizer']['state'].values()}))
        time.sleep(0.02)
    assert proc.returncode == 0
    assert all(len(t) == 2 and t[0] == t[1] for t in seen), seen  # recorded step == the optimizer's
    assert (4, 4) in seen or (8, 8) in seen, seen  # a step save was seen, not only the epoch ends (6, 12)


def test_signal_mid_epoch_saves_at_a_step_and_the_resumed_run_matches(shards, tmp_path):
    flags = ['--data-dir', shards, '--epochs', 2, '--log-every', 1, '--workers', 2]
    train(*flags, '--output', tmp_path / 'straight')
    proc = train(*flags, '--output', tmp_path / 'stopped', popen=dict(cwd=tmp_path))
    for line in proc.stdout:  # the step log is not printed: wait for the first epoch's line
        if line.startswith('epoch 0:'):
            break
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, out
    stopped = torch.load(tmp_path / 'stopped' / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert 6 < stopped['step'] < 12  # within epoch 1
    train(*flags, '--output', tmp_path / 'stopped')
    a, b = weights(tmp_path / 'straight' / 'last.pth.tar'), weights(tmp_path / 'stopped' / 'last.pth.tar')
    assert a[0]['step'] == b[0]['step'] == 12
    for k, v in a[1].items():
        assert torch.equal(v, b[1][k]), k


def straight_and_stopped_in_epoch_2_then_resumed(flags, tmp_path, stop_between):
    """(checkpoint, weights) of a straight run and of the same run stopped by SIGUSR2 inside epoch 2
    (after a step strictly between `stop_between`) and rerun to the end."""
    train(*flags, '--output', tmp_path / 'straight')
    proc = train(*flags, '--output', tmp_path / 'stopped', popen=dict(cwd=tmp_path))
    for line in proc.stdout:
        if line.startswith('epoch 1: loss'):
            break
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, out
    low, high = stop_between
    assert low < weights(tmp_path / 'stopped' / 'last.pth.tar')[0]['step'] < high
    train(*flags, '--output', tmp_path / 'stopped')
    return weights(tmp_path / 'straight' / 'last.pth.tar'), weights(tmp_path / 'stopped' / 'last.pth.tar')


def test_restart_schedule_warms_up_again_at_growth_and_a_run_stopped_after_it_resumes_exactly(shards, tmp_path):
    flags = ['--data-dir', shards, '--epochs', 3, '--log-every', 1, '--grow', '1:24:48', '--grow-schedule', 'restart',
             '--warmup-epochs', 0.5, '--warmup-lr', 1e-6, '--min-lr', 1e-5]
    a, b = straight_and_stopped_in_epoch_2_then_resumed(flags, tmp_path, (12, 18))
    assert a[0]['step'] == b[0]['step'] == 18 and a[0]['scheduler']['starts'] == b[0]['scheduler']['starts'] == [0, 6]
    for k, v in a[1].items():
        assert torch.equal(v, b[1][k]), k
    lr = {s['step']: s['lr'] for s in a[0]['log']['steps']}  # the rate of the step after each logged one
    assert lr[6] < 2e-5 < 5e-4 < lr[7] < lr[8] < lr[9]  # the first schedule ends at the growth; warmup again
    assert lr[17] < 1e-4  # and the second decays by the end of the run


def test_ramp_growth_moves_tau_over_its_epochs_and_a_run_stopped_mid_ramp_resumes_exactly(shards, tmp_path):
    flags = ['--data-dir', shards, '--epochs', 3, '--log-every', 1, '--grow', '1:24:48', '--grow-mode', 'ramp',
             '--tau-ramp-epochs', 1.5]  # 6 steps an epoch: growth at step 6, τ at √n from step 15
    a, b = straight_and_stopped_in_epoch_2_then_resumed(flags, tmp_path, (12, 15))  # τ still moving
    assert a[0]['step'] == b[0]['step'] == 18 and a[0]['growth_history'][0]['tau_ramp']['epochs'] == 1.5
    for k, v in a[1].items():
        assert torch.equal(v, b[1][k]), k
    assert a[1]['blocks.0.attn.q.tau'].item() == pytest.approx(24 ** 0.5)
    assert a[1]['blocks.1.ffn.tau'].item() == pytest.approx(48 ** 0.5)


def _ddp_worker(rank, world, port, batches, result_path):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    import torch.distributed as dist
    import timm
    from timm.scheduler import create_scheduler_v2
    from tokenformer_vit.engine import StepParts, train_one_epoch
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.manual_seed(0)
    model = timm.create_model('tokenformer_vit_tiny', depth=2, embed_dim=32, num_heads=2, attn_tokens=16,
                              ffn_tokens=32, patch_size=8, img_size=32, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched, _ = create_scheduler_v2(opt, 'cosine', num_epochs=1, updates_per_epoch=len(batches), step_on_epochs=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    share = len(batches[0][1]) // world
    mine = [(x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]) for x, y in batches]
    parts = StepParts(opt, (sched,), torch.nn.CrossEntropyLoss(), torch.device('cpu'), mean=(0.5,) * 3, std=(0.25,) * 3,
                      seed=0, rank=rank, raw_model=model)
    train_one_epoch(wrapped, mine, parts, step=0)
    if rank == 0:
        torch.save(dict(init=init, final=model.state_dict()), result_path)
    if world > 1:
        dist.destroy_process_group()


def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 4, (8,), generator=g)) for _ in range(4)]
    port = random.randint(20000, 40000)
    mp.spawn(_ddp_worker, args=(1, port, batches, tmp_path / 'one.pt'), nprocs=1)
    mp.spawn(_ddp_worker, args=(2, port, batches, tmp_path / 'two.pt'), nprocs=2)
    one, two = torch.load(tmp_path / 'one.pt'), torch.load(tmp_path / 'two.pt')
    assert all(torch.equal(one['init'][k], two['init'][k]) for k in one['init'])
    moved = max((one['final'][k] - one['init'][k]).abs().max() for k in one['init'])
    for k in one['final']:
        # tolerance: float32 sums in another order (each rank reduces half the batch, then gloo averages
        # the gradients); AdamW turns such 1e-7 gradient differences into at most ~0.1% of the weights'
        # movement (measured: 1.1e-5 of 1.2e-2 at lr 1e-2)
        diff = (one['final'][k] - two['final'][k]).abs().max()
        assert diff <= 2e-3 * moved, (k, diff, moved)
    assert moved > 1e-3  # it trained


def test_fused_pattention_run_matches_the_torch_run_and_is_refused_where_it_cannot_run(shards, tmp_path):
    # without a GPU the fused kernels run under TRITON_INTERPRET=1 (set by conftest.py, inherited here)
    assert os.environ.get('TRITON_INTERPRET') == '1' or torch.cuda.is_available()
    flags = ['--data-dir', shards, '--epochs', 2, '--grow', '1:24:48', '--device', 'cpu']
    train(*flags, '--output', tmp_path / 'torch', '--pattention-impl', 'torch')
    res = train(*flags, '--output', tmp_path / 'triton', '--pattention-impl', 'triton')
    assert 'grew attn_tokens 16 -> 24' in res.stdout
    ref, fused = weights(tmp_path / 'torch' / 'last.pth.tar')[1], weights(tmp_path / 'triton' / 'last.pth.tar')[1]
    assert ref.keys() == fused.keys()
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    res = train(*flags, '--output', tmp_path / 'o', '--pattention-impl', 'triton', check=False,
                env=dict(os.environ, TRITON_INTERPRET='0'))
    assert res.returncode == 2 and 'triton runs on CUDA GPUs, not on cpu' in res.stderr
    assert res.stderr.strip().count('\n') == 0, res.stderr
    res = train('--data-dir', shards, '--output', tmp_path / 'vit', '--pattention-impl', 'triton', '--model',
                'vit_tiny_patch16_224', '--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'patch_size=8',
                check=False)
    assert res.returncode == 2 and 'has no Pattention layers' in res.stderr


def test_a_shard_label_outside_the_classes_ends_the_job_with_one_sentence(shards, tmp_path):
    import json
    import shutil
    wds = tmp_path / 'wds'
    shutil.copytree(shards, wds)
    info = json.loads((wds / '_info.json').read_text())
    info['classes'] = info['classes'][:3]  # the shards hold labels 0-3: one is now outside the classes
    for split in info['splits'].values():
        split['num_classes'] = 3
    (wds / '_info.json').write_text(json.dumps(info))
    t0 = time.time()
    res = train('--data-dir', wds, '--output', tmp_path / 'run', '--epochs', 1, '--workers', 1, check=False)
    assert res.returncode == 2 and 'outside the 3 classes of the model' in res.stderr, res.stderr
    assert res.stderr.strip().count('\n') == 0, res.stderr
    assert time.time() - t0 < 120  # and the process ended, its loader worker with it


def test_resume_with_another_batch_size_or_process_count_is_refused(shards, tmp_path, capsys):
    from tokenformer_vit.checkpoint import read_checkpoint
    from tokenformer_vit.config import job_args, job_config
    from tokenformer_vit.errors import ConfigError
    from tokenformer_vit.run import check_resume
    out = tmp_path / 'run'
    train('--data-dir', shards, '--output', out, '--epochs', 1)
    before = (out / 'last.pth.tar').read_bytes()
    code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 2, '--batch-size', 4], capsys)
    assert code == 2 and 'was trained with a global batch of 8, not 4' in one_sentence(err)
    assert (out / 'last.pth.tar').read_bytes() == before and (out / 'summary.csv').read_text().count('\n') == 2
    # the same flags on two processes: another global batch too
    resume = read_checkpoint(out / 'last.pth.tar')
    config = job_config(job_args(**{k: v for k, v in resume['args'].items() if k != 'config'})).run
    with pytest.raises(ConfigError, match='was trained with a global batch of 8, not 16'):
        check_resume(config, resume, 2, out / 'last.pth.tar')


def test_a_failed_save_is_one_sentence_and_keeps_the_previous_checkpoint(shards, tmp_path, capsys, monkeypatch):
    import errno
    from tokenformer_vit import job
    from tokenformer_vit.distributed import Preemption
    out = tmp_path / 'run'
    real_save, saved = job.save_atomic, []

    def full_disk_after_the_first_epoch(obj, path, tmp=None):  # epoch 0's saves land, epoch 1's last.pth.tar not
        if path.name == 'last.pth.tar' and saved:
            raise OSError(errno.ENOSPC, 'No space left on device')
        real_save(obj, path, tmp=tmp)
        if path.name == 'last.pth.tar':
            saved.append(path.read_bytes())
    monkeypatch.setattr(job, 'save_atomic', full_disk_after_the_first_epoch)
    handlers = {sig: signal.getsignal(sig) for sig in Preemption.SIGNALS}
    try:
        code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 2], capsys)
    finally:  # the job ran in this process: give pytest its signal handlers back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 2 and '(No space left on device): free space in or fix --output' in one_sentence(err)
    assert len(saved) == 1 and (out / 'last.pth.tar').read_bytes() == saved[0]


def test_missing_shards_are_built_from_fashion_mnist_with_a_timm_readable_name(tmp_path):
    import json
    from tokenformer_vit.config import job_args, job_config
    from tokenformer_vit.distributed import Process
    from tokenformer_vit.job import ensure_shards
    config = job_config(job_args(data_dir=str(tmp_path / 'fm'), output=str(tmp_path / 'run'),
                                 shards_from='fashion-mnist',
                                 train_split='validation'))
    ensure_shards(config, Process())
    info = json.loads((tmp_path / 'fm' / '_info.json').read_text())
    assert info['name'] == 'fashion_mnist' and info['splits']['validation']['num_samples'] == 10_000
    assert all(f.startswith('fashion_mnist-validation-') for f in info['splits']['validation']['filenames'])


def test_missing_shards_are_built_from_cifar10_where_cifar10_root_points(tmp_path, monkeypatch):
    import json
    import numpy as np
    from PIL import Image
    from tokenformer_vit.cifar10 import CIFAR10_CLASSES
    from tokenformer_vit.config import job_args, job_config
    from tokenformer_vit.distributed import Process
    from tokenformer_vit.job import ensure_shards
    print('seed 0')
    rng = np.random.default_rng(0)
    for split, per_class in (('train', 3), ('test', 1)):
        for c in CIFAR10_CLASSES:
            (tmp_path / 'c10' / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3),
                                             dtype=np.uint8)).save(tmp_path / 'c10' / split / c / f'{i}.png')
    monkeypatch.setenv('CIFAR10_ROOT', str(tmp_path / 'c10'))
    config = job_config(job_args(data_dir=str(tmp_path / 'shards'), output=str(tmp_path / 'run'),
                                 shards_from='cifar10'))
    ensure_shards(config, Process())
    info = json.loads((tmp_path / 'shards' / '_info.json').read_text())
    assert info['name'] == 'cifar10' and info['classes'] == list(CIFAR10_CLASSES)
    assert [info['splits'][s]['num_samples'] for s in ('train', 'validation')] == [30, 10]


def _edited_shards(shards, tmp_path, edit):
    """A copy of the shards whose _info.json `edit` changed."""
    import json
    import shutil
    wds = tmp_path / 'wds'
    shutil.copytree(shards, wds)
    info = json.loads((wds / '_info.json').read_text())
    edit(info)
    (wds / '_info.json').write_text(json.dumps(info))
    return wds


@pytest.mark.parametrize('edit,message', [
    (lambda info: info['splits']['validation'].update(filenames=[]), "Split 'validation' of"),
    (lambda info: info['splits']['validation'].pop('num_samples'), 'does not list split'),
    (lambda info: info['splits']['train'].update(num_samples=0), "Split 'train' of"),
], ids=['validation-without-shards', 'no-num-samples', 'train-with-no-samples'])
def test_a_split_without_samples_is_refused_before_the_first_step(shards, tmp_path, capsys, edit, message):
    # before: an empty validation split trained a whole epoch, then failed in webdataset, losing it
    wds = _edited_shards(shards, tmp_path, edit)
    code, err = run_cli(['--data-dir', wds, '--output', tmp_path / 'run', '--epochs', 2], capsys)
    assert code == 2 and message in one_sentence(err), err
    assert not (tmp_path / 'run').exists()


def test_resuming_with_other_token_counts_is_refused_naming_the_checkpoints(shards, tmp_path, capsys):
    # before: the run went on at the checkpoint's size and said nothing
    out = tmp_path / 'run'
    train('--data-dir', shards, '--output', out, '--epochs', 1, '--grow', '0:24:48')
    before = (out / 'last.pth.tar').read_bytes()
    kwargs = [a if not a.startswith(('attn_tokens=', 'ffn_tokens=')) else a.split('=')[0] + '=24' for a in TINY]
    from tokenformer_vit.cli import main as cli
    code = cli([*kwargs, '--data-dir', str(shards), '--output', str(out), '--epochs', '2'])
    err = capsys.readouterr().err
    assert code == 2 and 'was started with attn_tokens=16, ffn_tokens=32 (it holds 24/48 tokens now)' in err, err
    assert (out / 'last.pth.tar').read_bytes() == before


def test_a_missing_embedded_data_set_names_the_folder_it_looked_in(tmp_path):
    res = train('--data-dir', tmp_path / 'shards', '--shards-from', 'cifar10', '--output', tmp_path / 'run',
                '--epochs', 1, check=False, env=dict(os.environ, CIFAR10_ROOT=str(tmp_path / 'nowhere')))
    assert res.returncode == 2 and f'No CIFAR-10 in {tmp_path / "nowhere"}' in res.stderr, res.stderr
    assert res.stderr.strip().count('\n') == 0 and not (tmp_path / 'run').exists()


def test_eval_only_evaluates_the_initial_checkpoint_as_it_is(shards, tmp_path):
    # before: a smaller checkpoint was grown (paper mode: new keys, new τ) and that other function evaluated
    small = tmp_path / 'small'
    train('--data-dir', shards, '--output', small, '--epochs', 1)
    bigger = [a.split('=')[0] + '=48' if a.startswith(('attn_tokens=', 'ffn_tokens=')) else a for a in TINY]
    cmd = [sys.executable, str(REPO / 'train_imagenet.py'), '--data-dir', str(shards), '--eval-only',
           '--initial-checkpoint', str(small / 'last.pth.tar')]
    as_is = subprocess.run([*cmd[:2], *TINY, *cmd[2:], '--output', str(tmp_path / 'e1')], capture_output=True,
                           text=True)
    grown = subprocess.run([*cmd[:2], *bigger, *cmd[2:], '--output', str(tmp_path / 'e2')], capture_output=True,
                           text=True)
    assert as_is.returncode == grown.returncode == 0, as_is.stderr + grown.stderr
    assert '(attn_tokens=16, ffn_tokens=32)' in grown.stdout
    top1 = lambda text: [line for line in text.splitlines() if line.startswith('model: top-1')]  # noqa: E731
    assert top1(grown.stdout) == top1(as_is.stdout) and len(top1(as_is.stdout)) == 1
    summary = (small / 'summary.csv').read_text().splitlines()
    assert f'{float(summary[1].split(",")[summary[0].split(",").index("eval_top1")]):.2f}%' in top1(as_is.stdout)[0]


def test_eval_only_gives_the_figures_of_timms_validate_pipeline_on_photographs(tmp_path):
    # before: OpenCV's bicubic without antialiasing, 4.3 per pixel from timm's input on ImageNet photographs,
    # and the job's top-1 and validate.py's differed. The checkpoint is random: its 10 logits are close,
    # so which is highest hangs on detail, and its loss tells apart inputs that differ anywhere.
    import timm
    from PIL import Image
    from photos import photo_like
    from timm.data import create_dataset, create_loader, resolve_data_config
    from tokenformer_vit.make_shards import ShardSpec, make_shards
    print('photo seeds 0-59, model seed 0')
    rng = random.Random(0)
    for i in range(60):
        folder = tmp_path / 'img' / f'class{i % 10}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(i, rng.randint(40, 160), rng.randint(40, 160))).save(folder / f'{i}.jpg', quality=92)
    make_shards(str(tmp_path / 'img'), 'validation', tmp_path / 'wds', ShardSpec(shard_size=16, progress=False,
                                                                                 name='photos'))
    torch.manual_seed(0)
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, attn_tokens=16, ffn_tokens=32, patch_size=8, img_size=32)
    model = timm.create_model('tokenformer_vit_tiny', num_classes=10, **kwargs).eval()
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'random.pth.tar')
    res = train('--data-dir', tmp_path / 'wds', '--output', tmp_path / 'run', '--eval-only', '--initial-checkpoint',
                tmp_path / 'random.pth.tar', '--num-classes', 10)
    line = next(line for line in res.stdout.splitlines() if line.startswith('model: top-1'))

    def validate(crop_pct=None):
        """What timm's validate.py computes, through the functions it calls, on these shards."""
        config = resolve_data_config(dict(img_size=32, crop_pct=crop_pct), model=model)
        loader = create_loader(create_dataset('wds/photos', root=str(tmp_path / 'wds'), split='validation'),
                               input_size=config['input_size'], batch_size=16, use_prefetcher=True,
                               interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                               crop_pct=config['crop_pct'], crop_mode=config['crop_mode'], device=torch.device('cpu'),
                               num_workers=0)
        with torch.no_grad():
            logits, targets = zip(*[(model(x), y) for x, y in loader])
        logits, targets = torch.cat(logits), torch.cat(targets)
        top = logits.topk(5, dim=1).indices.eq(targets[:, None])
        return (100 * top[:, 0].float().mean().item(), 100 * top.any(1).float().mean().item(),
                torch.nn.functional.cross_entropy(logits, targets).item(), len(targets))

    top1, top5, loss, n = validate()
    other = validate(crop_pct=0.8)  # a slightly other input
    print(line, '| timm:', top1, top5, loss, n, '| timm at crop 0.8:', other)
    assert line.startswith(f'model: top-1 {top1:.2f}%  top-5 {top5:.2f}%  loss '), line
    assert line.endswith(f'  ({n} images)') and abs(float(line.split('loss ')[1].split()[0]) - loss) < 1e-4, line
    assert abs(other[2] - loss) > 1e-3 and other[:2] != (top1, top5)  # the figures do tell inputs apart


def test_color_jitter_under_rand_augment_is_refused_as_a_flag_that_would_do_nothing(shards, tmp_path, capsys):
    # timm ignores colour jitter under RandAugment; before issue 32 the job said so in a note and went on
    code, err = run_cli(['--data-dir', shards, '--output', tmp_path / 'run', '--epochs', 1, '--rand-augment',
                         '--color-jitter', 0.4], capsys)
    assert code == 2 and '--color-jitter 0.4 takes effect only with --no-rand-augment' in one_sentence(err)
    quiet = train('--data-dir', shards, '--output', tmp_path / 'run2', '--epochs', 1, '--color-jitter', 0.4)
    assert 'epoch 0:' in quiet.stdout  # TINY has --no-rand-augment: the jitter applies
