"""The `train_imagenet.py` command: parse and check the flags, then run the job here on their values
(config.job_config), or submit it.

The launcher (submit.py) imports the job (train.py), never the reverse. A `UserError` from either,
a bad flag, file, checkpoint or data set, ends as one sentence on stderr and exit code 2.
"""
import sys
from typing import List, Optional

from .config import job_config, parse_args
from .errors import UserError

__all__ = ['main']


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.submit:
            from .submit import submit
            return submit(args)
        from .train import main as train
        return train(job_config(args))
    except KeyboardInterrupt:  # before the first step (later, Ctrl-C saves and stops: distributed.Preemption)
        print('error: interrupted before training started: nothing was saved; rerun the command to start again.',
              file=sys.stderr)
        return 130
    except UserError as e:
        message = str(e)
        if 'Original Traceback' in message:  # raised in a DataLoader worker: its own sentence is the last line
            message = message.strip().splitlines()[-1].split(': ', 1)[-1]
        print(f'error: {message}', file=sys.stderr)
        _close_process_group()
        return 2


def _close_process_group() -> None:
    """A refused rank tears down its process group before it exits (gloo aborts the process otherwise)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
