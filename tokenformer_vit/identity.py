"""A run's identity, fixed at its start: every flag but the few that may change between the
attempts of one run (`RESUMABLE`), and what the job resolved from them (the precision, the classes,
the input recipe as resolved for the model, the training shards). Each save records both; a resume
compares them with the command that resumes it and refuses any difference, in one sentence naming
the value then and now."""
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .config import build_parser, plain
from .errors import ConfigError

__all__ = ['RESUMABLE', 'MODEL_IDENTITY', 'changed_settings', 'flag_text', 'check_flags', 'resolved_identity',
           'check_resolved']

# The flags that may change between the attempts of one run (a requeue, a resume on another machine): where
# it runs, what it logs and where it writes, and switches of speed that compute the same function. Every other
# flag is the run's identity, fixed at its start: a resume compares it with the checkpoint's record and refuses
# a difference (`changed_settings`). An allow-list: a new flag is identity until it is listed here. --epochs
# may change only where the schedule so far does not depend on it (run.check_epochs).
RESUMABLE = frozenset({
    'config', 'output', 'data_dir', 'shards_from', 'workers', 'device', 'log_every', 'progress', 'tensorboard',
    'save_every_epochs', 'save_every_steps', 'eval_only', 'overwrite', 'compile', 'compile_mode', 'pattention_impl',
    'submit', 'cluster', 'nodes', 'gpus_per_node', 'tasks_per_node', 'cpus_per_task', 'mem_gb', 'partition',
    'timeout_min', 'job_dir', 'epochs'})
# what --eval-only compares: the flags that build the model it evaluates
MODEL_IDENTITY = ('model', 'model_kwargs', 'img_size')


def changed_settings(saved: dict, now: dict, keys=None) -> List[Tuple[str, Any, Any]]:
    """[(flag, saved value, value now)] for every identity flag (not in RESUMABLE; only `keys` if given)
    whose value now differs from a checkpoint's record `saved` (its `args`). A flag the record lacks (it
    was added after the save) counts as its default."""
    defaults = plain(vars(build_parser().parse_args([])))
    now = plain(now)
    changed = []
    for key in sorted(now if keys is None else keys):
        if key in RESUMABLE and keys is None:
            continue
        before = saved.get(key, defaults.get(key))
        if plain(before) != now.get(key):
            changed.append((key, before, now.get(key)))
    return changed


def flag_text(key: str, value) -> str:
    """How a flag's value is written on a command line: `--grow-mode paper`, `--model-kwargs a=1 b=2`."""
    flag = '--' + key.replace('_', '-')
    if isinstance(value, bool):
        negated = f'--no-{key.replace("_", "-")}'
        return flag if value else negated if negated in build_parser()._option_string_actions else f'without {flag}'
    if value is None:
        return f'no {flag}'
    if isinstance(value, dict):
        return f'{flag} ' + (' '.join(f'{k}={v}' for k, v in value.items()) or '(none)')
    if isinstance(value, (list, tuple)):
        return f'{flag} ' + ' '.join(map(str, value))
    return f'{flag} {value}'


def check_flags(resume: Dict, flags: Dict, path: Path, eval_only: bool = False) -> None:
    """Every identity flag (for --eval-only, those that build the model) as the checkpoint recorded it
    at the run's start: a difference is refused, naming both values."""
    saved = resume.get('args')
    if not isinstance(saved, dict):
        raise ConfigError(f'{path} records no settings, so a resume could not tell whether they changed: move it '
                          f'out of --output, or start from it with --initial-checkpoint.')
    changed = changed_settings(saved, flags, MODEL_IDENTITY if eval_only else None)
    changed.sort(key=lambda c: c[0] == 'grow_mode')  # its default follows --pretrained-path: name that first
    if changed:
        key, before, now = changed[0]
        more = (f' (and {", ".join("--" + k.replace("_", "-") for k, _, _ in changed[1:])})'
                if len(changed) > 1 else '')
        raise ConfigError(f'{path} was started with {flag_text(key, before)}, not {flag_text(key, now)}{more}: '
                          f'resume with the settings it was started with (config.yaml in --output lists them), or '
                          f'start a new --output.')


def resolved_identity(amp: str, num_classes: int, recipe, train_entry: Optional[Dict]) -> Dict:
    """What a job resolves from its flags and data besides the flags: recorded at the run's start."""
    train = train_entry or {}
    return plain(dict(amp=amp, num_classes=num_classes, recipe=asdict(recipe),
                      train_shards=dict(num_samples=train.get('num_samples'), filenames=train.get('filenames'))))


def check_resolved(saved: Dict, now: Dict, path: Path, train_split: str, data_dir: str) -> None:
    """The resolved values of a resumed run (`resolved_identity`) are those it was started with."""
    fresh = 'or start a new --output'
    for key, value in now.items():
        if key not in saved or saved[key] == value:
            continue
        before = saved[key]
        if key == 'amp':
            raise ConfigError(f'{path} was trained with --amp {before}, not {value} (the default differs on this '
                              f'device): pass --amp {before}, {fresh}.')
        if key == 'num_classes':
            raise ConfigError(f'{path} was trained for {before} classes, not {value}: pass --num-classes {before} '
                              f'or the data it was trained on, {fresh}.')
        if key == 'recipe':
            diff = ', '.join(f'{k} {before.get(k)} then, {v} now' for k, v in value.items() if before.get(k) != v)
            raise ConfigError(f'{path} was trained with another input recipe as resolved for the model ({diff}): '
                              f'resume with the model and flags it was started with, {fresh}.')
        raise ConfigError(f'{path} was trained on other {train_split} shards than those in --data-dir {data_dir} '
                          f'(rebuilt since, or another data set): resume on the shards it was trained on, {fresh}.')
