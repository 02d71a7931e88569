"""The job's run folder (--output): claimed by one job at a time, checked before work starts, written
and cleared only where its manifest says the job wrote, and the logs written there (summary.csv,
curves.png)."""
import csv
import json
import os
import tempfile
import weakref
from pathlib import Path
from typing import Dict, List

from .atomic import atomic_file
from .errors import ConfigError

__all__ = ['RunFolder', 'RUN_FILES', 'run_names', 'prepare_output', 'write_logs']


class RunFolder:
    """The job's claim on its --output: the folder (made if missing) and an OS lock on OUTPUT/.lock,
    held for the process's life, so that a second job on the same folder is refused instead of
    resuming the first one's saves under it. flock dies with its process: a killed job's lock never
    blocks, so a requeued task takes it again. Only rank 0 claims; the other ranks of a job follow it.
    `release` undoes what the claim made (the folder, the lock file, the manifest) when the job is refused.

    The folder's manifest (OUTPUT/.tokenformer-run.json) lists every name a run of this job has
    declared there: the job writes, replaces or removes a file only if the manifest lists it (and its
    temporary `.NAME.partial`), and refuses to start where a name it would write is taken by a file it
    did not write."""

    LOCK = '.lock'
    MANIFEST = '.tokenformer-run.json'
    # the folders whose lock this process holds: a forked child (a loader worker) closes its copies
    # (`_close_held_in_child`, the one fork hook), so that a killed job's lock goes with the job, not
    # with workers that outlive it for a few seconds
    held = weakref.WeakSet()

    def __init__(self, out: Path):
        self.out, self.lock, self.made, self.owned = out, None, [], set()

    def claim(self) -> None:
        import fcntl
        import socket
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f'--output {self.out} is a file: pass a folder for the run.')
        self.owned = self._read_manifest()
        lock = self.out / self.LOCK
        if lock.exists() and self.LOCK not in self.owned:
            raise ConfigError(f'--output {self.out} holds {self.LOCK}, which this job did not write and would '
                              f'replace: choose another --output, or move it away.')
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.made = missing  # deepest first, as they are removed
            if not lock.exists():
                self.made = [lock] + self.made
            f = open(lock, 'a+')
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
        RunFolder.held.add(self)
        try:
            self._record([self.LOCK])  # ours: it was checked above, made or locked by this claim
        except OSError as e:
            self.release()
            raise ConfigError(f'cannot write to --output {self.out} ({e.strerror}): choose a writable folder with '
                              f'free space.') from None

    def _read_manifest(self) -> set:
        path = self.out / self.MANIFEST
        if not path.is_file():
            return set()
        try:
            names = json.loads(path.read_text())['files']
            assert isinstance(names, list) and all(isinstance(n, str) for n in names)
        except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
            raise ConfigError(f'{path} is not the manifest this job writes: choose another --output, or move the '
                              f'file away.') from None
        return set(names)

    def tmp(self, name: str) -> Path:
        """The temporary of a declared name's atomic writes."""
        return self.out / f'.{name}.partial'

    def path(self, name: str) -> Path:
        """A declared name's path, to write through atomic_file(path, tmp=self.tmp(name))."""
        assert name in self.owned, f'{name} was not declared in the run folder'
        return self.out / name

    def declare(self, names) -> None:
        """Add names this run will write to the manifest, before anything is written; a name (or its
        temporary) taken by a file the manifest does not list is refused, in one sentence."""
        new = [n for n in names if n not in self.owned]
        foreign = [n for n in new if (self.out / n).exists() or self.tmp(n).exists()]
        if foreign:
            raise ConfigError(f'--output {self.out} holds {", ".join(foreign[:3])}, which this job did not write and '
                              'would replace: choose another --output, or move '
                              f'{"it" if len(foreign) == 1 else "them"} '
                              f'away.')
        self._record(new)

    def _record(self, new) -> None:
        new = [n for n in new if n not in self.owned]
        if not new:
            return
        path = self.out / self.MANIFEST
        if not path.exists():
            self.made = [path] + self.made
        self.owned |= set(new)
        with atomic_file(path, 'w', tmp=self.tmp(self.MANIFEST)) as f:
            json.dump(dict(files=sorted(self.owned), written_by='tokenformer_vit train_imagenet.py'), f, indent=1)

    @classmethod
    def _close_held_in_child(cls) -> None:
        for folder in list(cls.held):
            folder.close()

    def close(self) -> None:
        """Let go of the lock (the job is over, in this process), keeping every file."""
        RunFolder.held.discard(self)
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def release(self) -> None:
        """Remove the lock file, the manifest and the folders that the claim made, if nothing else was
        written there."""
        for path in self.made:
            try:
                path.unlink() if path.parent == self.out and path.name in (self.LOCK, self.MANIFEST) else path.rmdir()
            except OSError:  # not empty: the job wrote into it, or another one did
                break
        self.made = []
        self.close()


os.register_at_fork(after_in_child=RunFolder._close_held_in_child)


# what a run writes in its folder (besides checkpoint-EPOCH.pth.tar, and tb/ with --tensorboard)
RUN_FILES = ('last.pth.tar', 'best.pth.tar', 'summary.csv', 'curves.png', 'config.yaml')


def run_names(epochs: int, save_every_epochs: int, tensorboard: bool) -> list:
    """Every name a run of these settings may write in its folder."""
    every = save_every_epochs
    return [*RUN_FILES, *(f'checkpoint-{e}.pth.tar' for e in range(epochs) if every and (e + 1) % every == 0),
            *(['tb'] if tensorboard else [])]


def prepare_output(folder: RunFolder, names, overwrite: bool) -> None:
    """Declare the names the run will write (`RunFolder.declare`: none may be another's file), check
    that the folder can be written, clear what killed saves left (their temporaries, by the
    manifest), and never start a new run over an earlier run's results: they are kept unless
    --overwrite (a run resumes from last.pth.tar, so results without it are another run's).
    --overwrite removes only results that the manifest lists."""
    out = folder.out
    try:
        with tempfile.TemporaryFile(dir=out):  # a new name: never another file
            pass
    except OSError as e:
        raise ConfigError(f'cannot write to --output {out} ({e.strerror}): choose a writable folder with free '
                          f'space.') from None
    folder.declare(names)
    for name in sorted(folder.owned):  # temporaries of saves killed half-way
        folder.tmp(name).unlink(missing_ok=True)
    results = sorted(n for n in folder.owned if n not in ('last.pth.tar', folder.LOCK, folder.MANIFEST, 'tb')
                     and (out / n).is_file())
    if results and not (out / 'last.pth.tar').exists():
        if not overwrite:
            raise ConfigError(f'--output {out} holds results of an earlier run ({", ".join(results)}) but no '
                              'last.pth.tar to resume from: choose a new --output, or pass --overwrite to replace '
                              'them.')
        for name in results:
            (out / name).unlink()


def write_logs(folder: RunFolder, log: Dict[str, list], growth_history: List[Dict]) -> None:
    """summary.csv (timm's columns) and curves.png (growth events marked) from the run's log, each
    written atomically."""
    rows = log['epochs']
    if rows:
        with atomic_file(folder.path('summary.csv'), 'w', tmp=folder.tmp('summary.csv')) as f:
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
    with atomic_file(folder.path('curves.png'), tmp=folder.tmp('curves.png')) as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)
