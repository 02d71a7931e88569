"""The job's run folder (--output): claimed by one job at a time, checked before work starts, cleared
only of what a run writes, and the logs written there (summary.csv, curves.png)."""
import csv
import os
import re
from pathlib import Path
from typing import Dict, List

from .atomic import atomic_file
from .errors import ConfigError

__all__ = ['RunFolder', 'RUN_FILES', 'prepare_output', 'write_logs']


class RunFolder:
    """The job's claim on its --output: the folder (made if missing) and an OS lock on OUTPUT/.lock,
    held for the process's life, so that a second job on the same folder is refused instead of
    resuming the first one's saves under it. flock dies with its process: a killed job's lock never
    blocks, so a requeued task takes it again. Only rank 0 claims; the other ranks of a job follow it.
    `release` undoes what the claim made (the folder, the lock file) when the job is refused."""

    LOCK = '.lock'

    def __init__(self, out: Path):
        self.out, self.lock, self.made = out, None, []

    def claim(self) -> None:
        import fcntl
        import socket
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f'--output {self.out} is a file: pass a folder for the run.')
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.made = missing  # deepest first, as they are removed
            path = self.out / self.LOCK
            if not path.exists():
                self.made = [path] + self.made
            f = open(path, 'a+')
        except OSError as e:
            self.release()
            raise ConfigError(f'cannot write to --output {self.out} ({e.strerror}): choose a writable folder with '
                              f'free space.') from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'a process that wrote no name'
            f.close()
            raise ConfigError(f'--output {self.out} is in use by another job ({holder}): wait for it to end, or '
                              f'choose another --output.') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
        f.flush()
        self.lock = f
        # a forked child (a loader worker) shares the lock: it closes its copy, so that a killed
        # job's lock goes with the job, not with workers that outlive it for a few seconds
        os.register_at_fork(after_in_child=self._close_in_child)

    def _close_in_child(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def release(self) -> None:
        """Remove the lock file and the folders that the claim made, if nothing else was written there."""
        for path in self.made:
            try:
                path.unlink() if path.name == self.LOCK and path.parent == self.out else path.rmdir()
            except OSError:  # not empty: the job wrote into it, or another one did
                break
        self.made = []
        if self.lock is not None:
            self.lock.close()
            self.lock = None


# what a run writes in its folder (besides checkpoint-EPOCH.pth.tar, and tb/ with --tensorboard)
RUN_FILES = ('last.pth.tar', 'best.pth.tar', 'summary.csv', 'curves.png', 'config.yaml', '.write-test')


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make sure the claimed run folder can be written, clear what killed saves left, and never start
    a new run over an earlier run's results: they are kept unless --overwrite (a run resumes from
    last.pth.tar, so results without it are another run's). --overwrite removes only the files a
    run writes (best.pth.tar, summary.csv, curves.png, checkpoint-N.pth.tar)."""
    try:
        with atomic_file(out / '.write-test'):
            pass
        (out / '.write-test').unlink()
    except OSError as e:
        raise ConfigError(f'cannot write to --output {out} ({e.strerror}): choose a writable folder with free space.') from None
    for stale in out.glob('.*.tmp'):  # atomic_file's temporaries (.NAME.<random>.tmp) of saves killed half-way
        name = stale.name[1:-len('.tmp')].rsplit('.', 1)[0]
        if name in RUN_FILES or re.fullmatch(r'checkpoint-\d+\.pth\.tar', name):
            stale.unlink(missing_ok=True)
    results = [p for p in ('best.pth.tar', 'summary.csv', 'curves.png') if (out / p).exists()]
    results += sorted(p.name for p in out.glob('checkpoint-*.pth.tar'))
    if results and not (out / 'last.pth.tar').exists():
        if not overwrite:
            raise ConfigError(f'--output {out} holds results of an earlier run ({", ".join(results)}) but no '
                              f'last.pth.tar to resume from: choose a new --output, or pass --overwrite to replace them.')
        for name in results:
            (out / name).unlink()


def write_logs(output: Path, log: Dict[str, list], growth_history: List[Dict]) -> None:
    """summary.csv (timm's columns) and curves.png (growth events marked) from the run's log, each
    written atomically."""
    rows = log['epochs']
    if rows:
        with atomic_file(output / 'summary.csv', 'w') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[-1].keys()))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, '') for k in rows[-1]})
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if log['steps']:
        steps, losses = zip(*[(s['step'], s['loss']) for s in log['steps']])
        ax1.plot(steps, losses, lw=1, label='train loss')
    for key, label in (('eval_top1', 'top-1'), ('eval_ema_top1', 'EMA top-1')):
        points = [(r['step'], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax2.plot(*zip(*points), marker='o', label=label)
    for ax in (ax1, ax2):
        for g in growth_history:
            ax.axvline(g['step'], color='tab:red', ls='--', lw=1)
            ax.text(g['step'], ax.get_ylim()[1], f" grow {g['attn_tokens'][1]}/{g['ffn_tokens'][1]}",
                    color='tab:red', fontsize=8, va='top')
        ax.set_xlabel('step')
        ax.legend(loc='best')
    ax1.set_ylabel('loss')
    ax2.set_ylabel('top-1 (%)')
    fig.tight_layout()
    with atomic_file(output / 'curves.png') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)
