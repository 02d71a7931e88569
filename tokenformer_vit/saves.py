"""The training job's logs and saves in its run folder (train.py's job, run.py's run): config.yaml,
the loss curve and TensorBoard, summary.csv and curves.png after each evaluated epoch, and every save
of last.pth.tar (with best.pth.tar and checkpoint-EPOCH.pth.tar), each written atomically, under a
name the run folder's manifest lists (run_folder.py). `job` is train.py's `Job`, which imports this
module."""
from typing import Dict

import yaml

from .atomic import atomic_file, save_atomic
from .config import plain
from .errors import CheckpointError, DataError
from .run import Run, evaluate_run
from .run_folder import write_logs

__all__ = ['start_logging', 'StepHook', 'log_epoch', 'save', 'end_epoch']


def start_logging(job, run: Run):
    """TensorBoard if asked, and config.yaml in the run folder (the flags as run, with the derived values)."""
    if job.rank != 0:
        return None
    args, tb = job.args, None
    if args.tensorboard:  # the package was checked with the flags (config.py)
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(str(job.folder.path('tb')))
    with atomic_file(job.folder.path('config.yaml'), 'w', tmp=job.folder.tmp('config.yaml')) as f:
        yaml.safe_dump(plain(dict(vars(args), lr=job.config.peak_lr(job.world), amp=job.amp, world_size=job.world,
                                   num_classes=job.num_classes)), f, sort_keys=False)
    return tb


class StepHook:
    """Called after every optimizer step of the job: the loss curve every --log-every steps, and a
    save every --save-every-steps steps (none at an epoch's last step: the epoch's save follows)."""

    def __init__(self, job, run: Run, tb=None):
        self.job, self.run, self.tb = job, run, tb

    def __call__(self, step: int, loss, lr: float, n: int) -> None:
        args, run = self.job.args, self.run
        run.step = step  # where a save in the middle of the epoch stands
        if self.job.rank == 0 and (step % args.log_every == 0 or step == 1):
            value = float(loss)
            run.log['steps'].append(dict(step=step, loss=value, lr=lr))
            if self.tb:
                self.tb.add_scalar('train/loss', value, step)
                self.tb.add_scalar('train/lr', lr, step)
        upe = run.updates_per_epoch
        if args.save_every_steps and step % args.save_every_steps == 0 and step % upe:
            save(self.job, run, step // upe, step // upe - 1)


def log_epoch(job, run: Run, epoch: int, train_loss: float, row: Dict, img_s: float, eta: float, tb) -> None:
    """Append the epoch to the run's log; rank 0 writes summary.csv, curves.png, TensorBoard, a line."""
    row = dict(epoch=epoch, step=run.step, train_loss=train_loss, **row, lr=run.optimizer.param_groups[0]['lr'],
               img_s=img_s, attn_tokens=getattr(run.model, 'attn_tokens', ''),
               ffn_tokens=getattr(run.model, 'ffn_tokens', ''))
    run.log['epochs'].append(row)
    if job.rank != 0:
        return
    write_logs(job.folder, run.log, run.growth_history)
    if tb:
        for k, v in row.items():
            if k.startswith('eval') or k in ('train_loss', 'img_s'):
                tb.add_scalar(k, v, run.step)
    ema_text = f', EMA {row["eval_ema_top1"]:.2f}%' if run.ema is not None else ''
    print(f'epoch {epoch}: loss {train_loss:.4f}, top-1 {row["eval_top1"]:.2f}%{ema_text}, top-5 '
          f'{row["eval_top5"]:.2f}%, {img_s:.0f} img/s, ETA {eta / 60:.1f} min', flush=True)


def save(job, run: Run, epoch_in_progress: int, epoch_done: int, *names: str, gather: bool = True) -> None:
    """Rank 0 saves the run to last.pth.tar and to any further `names`, each atomically. Inside an
    epoch the save records where every rank's loader workers stand (all ranks call it together; with
    `gather` False only this rank's, the others then resume by image count)."""
    trained = run.step - epoch_in_progress * run.updates_per_epoch
    position = None
    if trained > 0 and job.train_stream is not None:
        mine = job.train_stream.position(trained)
        position = {str(job.rank): mine}
        if job.world > 1 and gather:
            import torch.distributed as dist
            every = [None] * job.world
            dist.all_gather_object(every, mine)
            position = {str(r): p for r, p in enumerate(every)}
    if job.rank != 0:
        return
    state = dict(run.checkpoint_state(epoch_in_progress, epoch_done), data_position=position)
    for name in ('last.pth.tar',) + names:
        try:
            save_atomic(state, job.folder.path(name), tmp=job.folder.tmp(name))
        except OSError as e:  # the file it would have replaced is intact
            raise CheckpointError(f'could not write {job.out / name} ({e.strerror}): free space in or fix --output, '
                                  f'then rerun the command to resume from the last save.') from None



def end_epoch(job, run: Run, val_loader, epoch: int, train_loss: float, img_s: float, eta: float, tb) -> None:
    """After an epoch's training: evaluate, log and save (best, every N epochs). A validation split that
    cannot be read in full stops the job after saving the trained epoch, which is evaluated on resume."""
    try:
        row = evaluate_run(run, val_loader)
    except DataError:
        run.unevaluated = dict(epoch=epoch, train_loss=train_loss, img_s=img_s)
        save(job, run, epoch + 1, epoch)
        raise
    run.unevaluated = None
    is_best = run.best is None or row['eval_top1'] > run.best
    run.best = row['eval_top1'] if is_best else run.best
    log_epoch(job, run, epoch, train_loss, row, img_s, eta, tb)
    every = job.args.save_every_epochs
    save(job, run, epoch + 1, epoch, *(('best.pth.tar',) if is_best else ()),
         *((f'checkpoint-{epoch}.pth.tar',) if every and (epoch + 1) % every == 0 else ()))
