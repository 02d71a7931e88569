"""What the job's tests share: the tiny model's flags, the job run as a command (in a process or in
this one), its one-sentence errors, checkpoints' weights and the processes a job leaves."""
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]



TINY = ['--model', 'tokenformer_vit_tiny', '--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2',
        'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8', '--img-size', '32', '--batch-size', '8', '--workers', '0',
        '--lr', '2e-3', '--warmup-epochs', '0.5', '--ema-decay', '0.9', '--mixup', '0.8', '--cutmix', '0',
        '--drop-path', '0.1', '--no-rand-augment', '--reprob', '0', '--no-progress', '--log-every', '2']


def train(*flags, check=True, popen=None, env=None):
    """Run train_imagenet.py on the tiny model; with popen (Popen's options) return the process."""
    cmd = [sys.executable, str(REPO / 'train_imagenet.py'), *TINY, *map(str, flags)]
    if popen is not None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def weights(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return ckpt, {k: v for k, v in ckpt['state_dict'].items()}


def run_cli(argv, capsys):
    """train_imagenet.py's command in this process: (exit code, what it printed on stderr); pytest's
    signal handlers are given back after it (the job installs its own: distributed.Preemption)."""
    import signal
    from tokenformer_vit.cli import main as cli
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    try:
        code = cli([*TINY, *map(str, argv)])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, capsys.readouterr().err


def one_sentence(err):
    """The error line of a command's stderr (argparse prints its usage line first)."""
    lines = [line for line in err.strip().splitlines() if 'error' in line]
    assert len(lines) == 1, err
    return lines[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f'/proc/{pid}/cmdline').read_bytes()
    except OSError:
        return b''


def descendants(pid: int):
    """The PIDs of every process below `pid` (children, their children, ...), read from /proc."""
    parent = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier]
        found += children
        frontier = children
    return found
