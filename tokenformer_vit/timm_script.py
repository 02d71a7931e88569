"""Run one of timm's scripts (validate.py, benchmark.py, train.py) with the tokenformer models registered.

    python -m tokenformer_vit.timm_script path/to/validate.py [ARGS...]

behaves exactly as `python path/to/validate.py ARGS...` would, after `import tokenformer_vit`.
timm's scripts live only in its git repository, not in the wheel:
`git clone https://github.com/huggingface/pytorch-image-models` (check out the tag of your timm).
"""
import runpy
import sys
from pathlib import Path

import tokenformer_vit  # noqa: F401  (registers the models with timm)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv else 2
    script = Path(argv[0])
    if script.is_dir():
        print(f"error: {script} is a folder: pass the path of the script in it, e.g. {script / 'validate.py'}.",
              file=sys.stderr)
        return 2
    if not script.is_file():
        print(f"error: {script} does not exist: timm's scripts are not in its wheel; clone timm's repository "
              f"(git clone https://github.com/huggingface/pytorch-image-models) and pass the path of {script.name} "
              f"in it.", file=sys.stderr)
        return 2
    # as `python SCRIPT ARGS`: the script's folder first on the path, its name and arguments in argv
    sys.argv = [str(script)] + argv[1:]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())
