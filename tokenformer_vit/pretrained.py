"""Fine-tuning's start (--pretrained-path, timm's name): a trained checkpoint read as weights and
loaded into a model of another class count or image size, as timm's `load_pretrained` does for
fine-tuning. The position embedding is resampled to the model's grid (timm's
`resample_abs_pos_embed`), the backbone is loaded strictly, and the classifier is kept where its
class count is the model's and left new where it is not. Unlike timm, which drops the classifier
whenever the class count differs from the architecture's default (1000), the count is read from the
checkpoint's own classifier, so fine-tuning on the classes it was trained on keeps it.

    state = read_pretrained('runs/demo/last.pth.tar')  # or timm's, a .safetensors, a --hf-dir folder
    print(load_pretrained(model, state, 'runs/demo/last.pth.tar'))
"""
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from .checkpoint import read_checkpoint
from .errors import CheckpointError
from .tokenformer_vit import checkpoint_filter_fn

__all__ = ['LOCAL_DIR_WEIGHTS', 'pretrained_file', 'read_pretrained', 'checkpoint_classes', 'head_kept',
           'load_pretrained']

# the weights of a folder that timm's `local-dir:` reads (the grow command's --hf-dir), in timm's order
LOCAL_DIR_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')


def pretrained_file(path: os.PathLike) -> Path:
    """The weights file of --pretrained-path: the file itself, or a local-dir folder's weights."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in LOCAL_DIR_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f'--pretrained-path {path} is a folder without {" or ".join(LOCAL_DIR_WEIGHTS)}: pass a '
                          f'checkpoint file, or a folder the grow command wrote with --hf-dir.')


def read_pretrained(path: os.PathLike) -> Dict[str, torch.Tensor]:
    """The model's weights in a checkpoint of any kind the job reads: the `state_dict` of a training
    checkpoint (ours or timm's train.py's; not its EMA, as timm's load_pretrained reads one), a bare
    state dict, a .safetensors file or a local-dir folder."""
    file = pretrained_file(path)
    return read_checkpoint(file)['state_dict']


def _classifier(model: torch.nn.Module) -> str:
    """The classifier's name: the model's pretrained_cfg `classifier`, as timm names it."""
    return (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head')


def head_kept(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> bool:
    """Whether the checkpoint's classifier fits the model's: the same weights, of the same class count."""
    prefix = _classifier(model) + '.'
    mine = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    theirs = {k: v for k, v in state.items() if k.startswith(prefix)}
    return bool(mine) and mine.keys() == theirs.keys() and all(v.shape == theirs[k].shape for k, v in mine.items())


def checkpoint_classes(state: Dict[str, torch.Tensor], classifier: str = 'head') -> Optional[int]:
    """The class count of a state dict's classifier, or None where it has none."""
    weight = state.get(classifier + '.weight')
    return None if weight is None else weight.shape[0]


def load_pretrained(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str, what: str = 'the model',
                    load: bool = True) -> str:
    """Load `state` into `model` for fine-tuning (see the module's docstring), or with `load` False only
    check that it would load (a model on the meta device: before work starts). A checkpoint of another
    architecture or width is one sentence naming the first difference and `what` the model is; returns
    the line that says what was loaded."""
    grid = None
    if hasattr(model, 'pos_embed') and hasattr(model, 'patch_embed') and 'pos_embed' in state:
        before = state['pos_embed'].shape[1]
        state = checkpoint_filter_fn(state, model)  # timm's resample_abs_pos_embed to the model's grid
        if state['pos_embed'].shape[1] != before:
            old, new = round((before - getattr(model, 'num_prefix_tokens', 1)) ** 0.5), model.patch_embed.grid_size
            grid = f'; position embedding resampled from {old}x{old} to {new[0]}x{new[1]} patches'
    classifier = _classifier(model)
    kept, then = head_kept(model, state), checkpoint_classes(state, classifier)
    if not kept:  # timm's load_pretrained drops it and loads the rest
        state = {k: v for k, v in state.items() if not k.startswith(classifier + '.')}
    mine = model.state_dict()
    missing = [k for k in mine if k not in state and (kept or not k.startswith(classifier + '.'))]
    unexpected = [k for k in state if k not in mine]
    problems = [f'{k} is {tuple(v.shape)} there, {tuple(mine[k].shape)} here' for k, v in state.items()
                if k in mine and v.shape != mine[k].shape]
    if missing:
        problems.append(f'it lacks {missing[0]}' + (f' and {len(missing) - 1} more' if len(missing) > 1 else ''))
    if unexpected:
        problems.append(f'the model has no {unexpected[0]}' + (f' nor {len(unexpected) - 1} more' if len(unexpected) > 1
                                                                else ''))
    if problems:
        raise CheckpointError(f'--pretrained-path {source} is not a checkpoint of {what} ({problems[0]}): fine-tune '
                              f'the architecture and width it was trained with.')
    if load:
        model.load_state_dict(state, strict=kept)
    now = checkpoint_classes(mine, classifier)
    head = f'classifier kept ({now} classes)' if kept else \
        f'classifier new for {now} classes' + (f' (the checkpoint\'s has {then})' if then else '')
    return f'fine-tuning from {source}: backbone loaded, {head}{grid or ""}'
