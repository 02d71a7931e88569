"""One training run in memory: the model, its EMA, optimizer and schedules, grown on a plan, trained
epoch by epoch and evaluated. The job (train.py) and every study (benchmarks/) build it from plain
values (`RunConfig`; config.run_config turns the job's flags into one) and train it with the one
epoch loop here, `train_epochs`: an experiment measures what the job does.

    config = study_config(model='tokenformer_vit_tiny', epochs=5, grow='2:384:1536')  # config.py
    model, history = build_model(config, num_classes=10)
    run = build_run(config, model, 10, loader.dataset.batches_per_rank, growth_history=history)
    for epoch in train_epochs(run, loader):
        print(epoch['epoch'], epoch['loss'], evaluate_run(run, val_loader))
"""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from .checkpoint import read_checkpoint
from .distributed import Process
from .engine import LRSchedule, StepParts, build_loss, build_optimizer, evaluate, train_one_epoch
from .errors import CheckpointError, ConfigError, GrowthError
from .growth import GrowthPlan, TauRamp, check_exact, grow_training_state
from .pattention import Pattention, set_pattention_impl
from .pretrained import checkpoint_classes, load_pretrained, read_pretrained
from .tokenformer_vit import token_counts, token_counts_or_none

__all__ = ['RunConfig', 'Run', 'create_model', 'build_model', 'check_pretrained', 'build_run', 'check_resume',
           'check_epochs',
           'start_tokens', 'grow_at_epoch', 'train_epoch', 'train_epochs', 'evaluate_checked', 'evaluate_run']


@dataclass(frozen=True)
class RunConfig:
    """What a training run needs, as plain values: the job's flags of the same names, with no defaults
    of its own (the flags' are the only ones: config.run_config, or config.study_config for studies)."""
    model: str
    model_kwargs: Dict[str, Any]
    epochs: int
    batch_size: int  # per process
    seed: int
    img_size: Optional[int]
    drop_path: float
    pattention_impl: str
    initial_checkpoint: Optional[str]
    pretrained_path: Optional[str]  # fine-tune from it (pretrained.py)
    growth: GrowthPlan
    lr: Optional[float]  # None: blr x global batch / 256
    blr: float
    weight_decay: float
    layer_decay: Optional[float]  # None: every layer at the same learning rate
    opt_betas: Tuple[float, float]
    warmup_epochs: float
    warmup_lr: float
    min_lr: float
    clip_grad: Optional[float]
    smoothing: float
    reprob: float  # random erasing, on the normalised batch
    mixup: float
    cutmix: float
    ema_decay: float
    compile: bool
    compile_mode: str
    flags: Dict[str, Any] = field(default_factory=dict)  # the command line as run: kept in checkpoints

    def peak_lr(self, world: int) -> float:
        return self.lr if self.lr is not None else self.blr * self.batch_size * world / 256


# ----------------------------------------------------------------------------------------------------------------
# the model


def create_model(config: RunConfig, num_classes: int, attn_tokens: Optional[int] = None,
                 ffn_tokens: Optional[int] = None, device: Optional[str] = None) -> torch.nn.Module:
    """timm.create_model from the config, at these token counts if given (on `device`: 'meta' builds
    no weights)."""
    import timm
    kwargs = dict(config.model_kwargs)
    if attn_tokens is not None:
        kwargs.update(attn_tokens=attn_tokens, ffn_tokens=ffn_tokens)
    if config.img_size:
        kwargs['img_size'] = config.img_size
    try:
        model = timm.create_model(config.model, num_classes=num_classes, drop_path_rate=config.drop_path,
                                  **({'device': device} if device else {}), **kwargs)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f'cannot create --model {config.model} with {kwargs}: {e}') from None
    if config.pattention_impl != 'torch':  # speed only, not a model argument: checkpoints stay portable
        set_pattention_impl(model, config.pattention_impl)
    return model


def load_weights(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str, config: RunConfig) -> None:
    """load_state_dict, with a mismatch (another width, head count or depth) said in one sentence (a
    model on the meta device takes the tensors as they are: the check before work starts)."""
    try:
        model.load_state_dict(state, assign=next(model.parameters()).is_meta)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if 'size mismatch' in line or 'Missing' in line
                       or 'Unexpected' in line), str(e).splitlines()[0])
        raise CheckpointError(f'{source} does not fit --model {config.model} with --model-kwargs '
                              f'{dict(config.model_kwargs)} ({detail.rstrip(".")}): pass the model and kwargs it '
                              f'was trained with.') from None


def build_model(config: RunConfig, num_classes: int, resume: Optional[Dict] = None, source: str = 'checkpoint',
                grow_initial: bool = True, weights: Optional[Dict] = None,
                say: Callable[[str], None] = print) -> Tuple[torch.nn.Module, List[Dict]]:
    """(model, growth history), the model built once, at the size of the weights it gets: resumed
    from `resume`, grown from the config's initial checkpoint to the config's token counts (unless
    `grow_initial` is False: evaluating it as it is), fine-tuned from the config's pretrained
    checkpoint (`say` gets the line that tells what was loaded), or new, initialised from the seed
    (the same on every rank). `weights` are the initial or pretrained checkpoint's, read
    (`read_start_weights`) and checked (`check_initial`, `check_pretrained`) before work; read here if
    not given."""
    torch.manual_seed(config.seed)
    if resume is not None:
        sizes = token_counts_or_none(resume['state_dict']) or (None, None)  # (None, None): another timm model
        model = create_model(config, num_classes, *sizes)
        load_weights(model, resume['state_dict'], source, config)
        return model, list(resume.get('growth_history') or [])
    if not config.pretrained_path and not config.initial_checkpoint:
        return create_model(config, num_classes), []
    state = read_start_weights(config) if weights is None else weights
    if config.pretrained_path:
        return _fine_tuned(config, num_classes, state, say)
    sizes = token_counts(state, config.initial_checkpoint)
    model = create_model(config, num_classes, *sizes)
    load_weights(model, state, str(config.initial_checkpoint), config)
    target = start_tokens(config.model, config.model_kwargs)  # config.py has checked it is a Tokenformer-ViT
    if target == sizes or not grow_initial:
        return model, []
    plan = config.growth
    record = grow_training_state(model, *target, plan.mode, seed=config.seed, ramp_epochs=plan.ramp_epochs)
    return model, [dict(record, epoch=0, source=str(config.initial_checkpoint))]


def read_start_weights(config: RunConfig) -> Dict[str, torch.Tensor]:
    """The weights a new run starts from: --pretrained-path's (any checkpoint kind, pretrained.py) or
    --initial-checkpoint's."""
    if config.pretrained_path:
        return read_pretrained(config.pretrained_path)
    return read_checkpoint(config.initial_checkpoint)['state_dict']


def _fine_tuned(config: RunConfig, num_classes: int, state: Dict,
                say: Callable[[str], None]) -> Tuple[torch.nn.Module, List[Dict]]:
    """The model at the pretrained checkpoint's token counts, loaded from it (pretrained.py), then
    grown to the counts --model-kwargs asks for, in the plan's mode (preserve unless --grow-mode)."""
    sizes = token_counts_or_none(state)
    target, what = _fine_tune_tokens(config, sizes), _described(config)
    model = create_model(config, num_classes, *(sizes or (None, None)))
    line = load_pretrained(model, state, str(config.pretrained_path), what)
    if target == sizes:
        say(line)
        return model, []
    plan = config.growth
    record = grow_training_state(model, *target, plan.mode, seed=config.seed, ramp_epochs=plan.ramp_epochs)
    say(f'{line}; grown from attn_tokens={sizes[0]}, ffn_tokens={sizes[1]} to {target[0]}/{target[1]} ({plan.mode})')
    return model, [dict(record, epoch=0, source=str(config.pretrained_path))]


def _fine_tune_tokens(config: RunConfig, sizes: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """The token counts a fine-tuning run trains at: those --model-kwargs names, the checkpoint's for the others."""
    if sizes is None:
        return None
    kwargs = dict(config.model_kwargs)
    return kwargs.get('attn_tokens', sizes[0]), kwargs.get('ffn_tokens', sizes[1])


def _described(config: RunConfig) -> str:
    kwargs = {k: v for k, v in dict(config.model_kwargs).items() if k not in ('attn_tokens', 'ffn_tokens')}
    return f'--model {config.model}' + (f' with --model-kwargs {kwargs}' if kwargs else '')


def check_pretrained(config: RunConfig, state: Dict, source: str) -> None:
    """Before work starts: --pretrained-path holds the model's architecture and width (any token
    counts no larger than asked, any class count and image size), a growth to the asked counts keeps
    the function where its mode says so, and the planned growths fit the counts it starts at."""
    sizes, ours = token_counts_or_none(state), start_tokens(config.model, dict(config.model_kwargs)) is not None
    if ours != (sizes is not None):
        raise CheckpointError(f'--pretrained-path {source} is {"not " * ours}a Tokenformer-ViT checkpoint (it has '
                              f'{"no " * ours}parameter tokens) and --model {config.model} is {"not " * (not ours)}'
                              f'one: fine-tune it with the --model it was trained with.')
    target = _fine_tune_tokens(config, sizes)
    if sizes is not None:
        _refuse_shrinking(f'--pretrained-path {source}', sizes, target, '--model-kwargs asks for',
                          'ask for at least its counts, or leave attn_tokens and ffn_tokens out')
    what = _described(config)
    meta = create_model(config, 1, *(sizes or (None, None)), device='meta')  # any class count: the head may be new
    load_pretrained(meta, state, source, what, load=False)
    mode = config.growth.mode
    if target == sizes and not config.growth and mode != 'preserve':  # preserve: the default, given or not
        if sizes is None:
            raise ConfigError(f'--grow-mode {mode} takes effect only on a model that grows, and --model {config.model} '
                              f'has no parameter tokens: leave --grow-mode out.')
        raise ConfigError(f'--grow-mode {mode} takes effect only when the model grows, and --pretrained-path {source} '
                          f'holds the {sizes[0]}/{sizes[1]} tokens asked for with no --grow: ask for more tokens in '
                          f'--model-kwargs, add a --grow, or leave --grow-mode out.')
    if target is None:
        return
    _check_exact_growth(meta, mode, f'--pretrained-path {source}', sizes, target)
    config.growth.check(target, epochs=config.epochs)


def _refuse_shrinking(what: str, sizes: Tuple[int, int], target: Tuple[int, int], asked: str, fix: str) -> None:
    """A checkpoint of `sizes` tokens grows to `target`; it does not shrink."""
    if target[0] < sizes[0] or target[1] < sizes[1]:
        raise CheckpointError(f'{what} holds attn_tokens={sizes[0]}, ffn_tokens={sizes[1]}, more than {asked} '
                              f'({target[0]}/{target[1]}): a checkpoint grows, it does not shrink; {fix}.')


def _check_exact_growth(meta: torch.nn.Module, mode: str, what: str, sizes, target) -> None:
    """A growth of `meta`'s Pattentions from `sizes` to `target` keeps the function where `mode` says so."""
    if target != sizes:
        for norm in {m.norm for m in meta.modules() if isinstance(m, Pattention)}:
            check_exact(mode, norm, f'growing {what} to {target[0]}/{target[1]}')


def check_initial(config: RunConfig, state: Dict, grow: bool = True) -> None:
    """Before work starts: --initial-checkpoint holds the config's model (architecture, width, depth;
    any class count: the data's is checked when it is known) at token counts it can grow from, no
    larger than those the run starts at, and the growth to them keeps the function where its mode
    says so. With `grow` False (--eval-only evaluates it as it is) any token counts."""
    source = str(config.initial_checkpoint)
    sizes = token_counts(state, source)  # config.py has checked that --model is a Tokenformer-ViT
    target = start_tokens(config.model, dict(config.model_kwargs))
    if grow:
        _refuse_shrinking(f'--initial-checkpoint {source}', sizes, target,
                          f'--model {config.model} with --model-kwargs {dict(config.model_kwargs)} starts at',
                          'start at its counts or more')
    meta = create_model(config, checkpoint_classes(state) or 0, *sizes, device='meta')
    load_weights(meta, state, source, config)
    if grow:
        _check_exact_growth(meta, config.growth.mode, f'--initial-checkpoint {source}', sizes, target)


def start_tokens(model: Optional[str], model_kwargs) -> Optional[Tuple[int, int]]:
    """(attn_tokens, ffn_tokens) a run of this --model and --model-kwargs starts with, or None when
    that cannot be told (no record, not a Tokenformer-ViT)."""
    import timm
    if not model or not isinstance(model_kwargs, (dict, type(None))) or not timm.is_model(model):
        return None
    try:
        meta = timm.create_model(model, device='meta', **(model_kwargs or {}))
    except Exception:  # noqa: BLE001 - a record this version cannot build tells nothing
        return None
    return (meta.attn_tokens, meta.ffn_tokens) if hasattr(meta, 'attn_tokens') else None


def check_resume(config: RunConfig, resume: Dict, world: int, path: Path) -> None:
    """A run resumes with the global batch it was trained with (the step count, the data position and
    the schedule all depend on it) and with the model it was started with (another width fails to
    load; other token counts would silently train on at the checkpoint's size), and its growths still
    to come grow the model as the checkpoint holds it."""
    if 'step' not in resume or 'global_batch' not in resume:
        raise ConfigError(f'{path} was not saved by this training job (it records no step and global batch): move '
                          f'it out of --output, or start from it with --initial-checkpoint.')
    saved, before = resume.get('args') or {}, resume['global_batch']
    if before != config.batch_size * world:
        raise ConfigError(f'{path} was trained with a global batch of {before}, not '
                          f'{config.batch_size * world} (--batch-size {config.batch_size} x {world} process(es)): '
                          f'resume with the same batch, or start a new --output.')
    now = token_counts_or_none(resume['state_dict'])
    if now is None:  # another timm model: config.py has checked that the flags build one
        return
    started = start_tokens(saved.get('model'), saved.get('model_kwargs'))
    asked = start_tokens(config.model, dict(config.model_kwargs))
    if started and asked and started != asked:
        raise ConfigError(f'{path} was started with attn_tokens={started[0]}, ffn_tokens={started[1]} (it holds '
                          f'{now[0]}/{now[1]} tokens now), but --model {config.model} with --model-kwargs '
                          f'{dict(config.model_kwargs)} starts at {asked[0]}/{asked[1]}: resume with the flags it '
                          f'was started with, or start a new --output.')
    config.growth.check(now, list(resume.get('growth_history') or []), resumed_at=resume.get('epoch_in_progress'))


def check_epochs(config: RunConfig, resume: Dict, updates_per_epoch: int, path: Path) -> None:
    """A resumed run may change --epochs only where the learning rate it has followed so far, and will
    follow to the next growth, does not depend on it: under the 'restart' schedule, before a planned
    growth (the segment in progress ends there). Elsewhere the cosine runs to the last epoch, and a
    new end would give the rest of the run a curve that neither --epochs gives."""
    saved = (resume.get('args') or {}).get('epochs')
    if not isinstance(saved, int) or saved == config.epochs:
        return
    plan, step = config.growth, int(resume['step'])
    growths = sorted(e.epoch * updates_per_epoch for e in plan.events) if plan.schedule == 'restart' else []
    segment_end = next((g for g in growths if g >= step), None)
    if segment_end is None or segment_end >= min(saved, config.epochs) * updates_per_epoch:
        raise ConfigError(f'{path} was started with --epochs {saved}, not {config.epochs}, and its learning rate '
                          f'follows a cosine to the end of epoch {saved} (--grow-schedule {plan.schedule}, no '
                          f'planned growth ahead): resume with --epochs {saved}, or start a new --output.')


# ----------------------------------------------------------------------------------------------------------------
# a run: the state that trains, grows and is saved


@dataclass
class Run:
    """Everything a training run carries from step to step; `checkpoint_state` is what a save keeps."""
    config: RunConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    loss_fn: Callable
    device: torch.device
    updates_per_epoch: int
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    ema: Optional[torch.nn.Module] = None
    mixup: Optional[Callable] = None
    erasing: Optional[Callable] = None  # timm's RandomErasing, before mixup
    scaler: Optional[torch.amp.GradScaler] = None
    amp_dtype: Optional[torch.dtype] = None
    rank: int = 0
    world: int = 1
    step: int = 0
    best: Optional[float] = None
    growth_history: List[Dict] = field(default_factory=list)
    log: Dict[str, list] = field(default_factory=lambda: dict(epochs=[], steps=[]))
    train_model: Optional[torch.nn.Module] = None  # the model as trained: compiled, wrapped in DDP
    eval_model: Optional[torch.nn.Module] = None  # the model as evaluated: compiled
    eval_ema: Optional[torch.nn.Module] = None  # the EMA as evaluated: compiled
    identity: Dict[str, Any] = field(default_factory=dict)  # what the job resolved at the start: compared on resume
    unevaluated: Optional[Dict] = None  # a trained epoch whose evaluation could not run: evaluated on resume
    data_position: Optional[Dict] = None  # this rank's loader position in a resumed epoch (ShardStream.position)

    def __post_init__(self):
        # τ of a 'ramp' growth in progress: a schedule stepped with the learning rate
        self.tau_ramp = TauRamp(self.model, self.growth_history, self.updates_per_epoch)
        if self.train_model is None:
            self.wrap()

    def wrap(self) -> None:
        """The modules that train and evaluate: compiled with --compile, the trained one in DDP on
        several ranks; made anew after a growth (`grow_at_epoch`)."""
        config = self.config
        wrap = (lambda m: torch.compile(m, mode=config.compile_mode)) if config.compile else (lambda m: m)
        self.eval_model = wrap(self.model)
        self.eval_ema = wrap(self.ema.module) if self.ema is not None else None
        self.train_model = self.eval_model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.eval_model, device_ids=ids)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled model replays CUDA graphs, whose outputs the next step overwrites."""
        return self.config.compile and self.config.compile_mode in ('reduce-overhead', 'max-autotune') \
            and self.device.type == 'cuda'

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.world

    def checkpoint_state(self, epoch_in_progress: int, epoch_done: int) -> Dict:
        """The whole state after optimizer step `self.step`, in timm's checkpoint format."""
        ema, model = self.ema, self.model
        return dict(arch=self.config.model, state_dict=model.state_dict(),
                    state_dict_ema=ema.module.state_dict() if ema else None,
                    optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler else None,
                    scheduler=self.scheduler.state_dict(), epoch=epoch_done, epoch_in_progress=epoch_in_progress,
                    step=self.step, global_batch=self.global_batch, metric=self.best, version=2,
                    args=self.config.flags, identity=self.identity, unevaluated=self.unevaluated,
                    growth_history=self.growth_history, log=self.log)

    def load(self, resume: Dict) -> None:
        """Continue from a checkpoint's optimizer, scaler, schedule, step, best metric and log (its
        growth history comes with the model, from build_model)."""
        if resume.get('optimizer'):
            self.optimizer.load_state_dict(resume['optimizer'])
        if self.scaler is not None and resume.get('scaler'):
            self.scaler.load_state_dict(resume['scaler'])
        if resume.get('scheduler'):
            self.scheduler.load_state_dict(resume['scheduler'])
        self.step, self.best = int(resume['step']), resume.get('metric')
        self.log = resume.get('log') or self.log
        self.unevaluated = resume.get('unevaluated')
        self.data_position = (resume.get('data_position') or {}).get(str(self.rank))


def build_run(config: RunConfig, model: torch.nn.Module, num_classes: int, updates_per_epoch: int, *,
              process: Process = Process(), growth_history: Iterable[Dict] = (), resume: Optional[Dict] = None,
              source: str = 'checkpoint') -> Run:
    """A Run of `model` in `process` (rank, device, precision): EMA, optimizer, schedule (ending at the
    config's epochs, restarted at growths under the 'restart' policy), loss, random erasing and mixup;
    continued from `resume` if given. The input is normalised with the model's mean and std (its
    pretrained_cfg)."""
    from .transforms import build_erasing, build_mixup
    device, amp, world = process.device, process.amp, process.world
    model.to(device=device, memory_format=torch.channels_last)
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    ema = None
    if config.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=config.ema_decay)
        if resume is not None and resume.get('state_dict_ema'):
            load_weights(ema.module, resume['state_dict_ema'], f'{source} (EMA)', config)
    optimizer = build_optimizer(model, config.peak_lr(world), config.weight_decay, config.opt_betas, device,
                                config.layer_decay)
    scheduler = LRSchedule(optimizer, total_steps=config.epochs * updates_per_epoch,
                           warmup_steps=config.warmup_epochs * updates_per_epoch, warmup_lr=config.warmup_lr,
                           min_lr=config.min_lr, policy=config.growth.schedule,
                           planned=config.growth.restart_steps(updates_per_epoch))
    mixup = build_mixup(num_classes, config.mixup, config.cutmix, config.smoothing)
    run = Run(config=config, model=model, optimizer=optimizer, scheduler=scheduler, device=device,
              loss_fn=build_loss(mixup is not None, config.smoothing), updates_per_epoch=updates_per_epoch,
              mean=cfg.get('mean', Run.mean), std=cfg.get('std', Run.std), ema=ema, mixup=mixup,
              erasing=build_erasing(config.reprob, device),
              scaler=torch.amp.GradScaler('cuda') if amp == 'fp16' else None,
              amp_dtype={'bf16': torch.bfloat16, 'fp16': torch.float16, 'none': None}[amp],
              rank=process.rank, world=world, growth_history=list(growth_history))
    if resume is not None:
        run.load(resume)
    return run


# ----------------------------------------------------------------------------------------------------------------
# training: growth at an epoch, one epoch, the epoch loop, evaluation


def grow_at_epoch(run: Run, epoch: int) -> Optional[Dict]:
    """The plan's growth of `epoch`, at the epoch's start, once (`GrowthPlan.at` skips one the run's
    history holds). Grows the model, EMA, optimizer and schedule together; returns the record."""
    plan = run.config.growth
    event = plan.at(epoch, run.growth_history)
    if event is None:
        return None
    if run.step != epoch * run.updates_per_epoch:  # resumed inside the epoch, where this run did not grow
        raise GrowthError(f'--grow {event} is at the start of epoch {epoch}, which this run resumes at step '
                          f'{run.step} without having grown there: resume with the --grow it was started with, or '
                          f'start a new --output.')
    mode = plan.mode_of(event)
    record = grow_training_state(run.model, event.attn_tokens, event.ffn_tokens, mode, optimizer=run.optimizer,
                                 ema=run.ema, scheduler=run.scheduler, step=run.step,
                                 seed=run.config.seed * 7919 + epoch, ramp_epochs=plan.ramp_epochs)
    record['epoch'] = epoch
    run.growth_history.append(record)
    if run.config.compile:  # the old size's graphs never run again: cleared, they do not count towards dynamo's
        torch.compiler.reset()  # recompile limit, and each size compiles once per phase (bench_compile_growth.py)
    run.wrap()
    if run.rank == 0:
        n_params = sum(p.numel() for p in run.model.parameters())
        print(f'epoch {epoch}: grew attn_tokens {record["attn_tokens"][0]} -> {run.model.attn_tokens}, '
              f'ffn_tokens {record["ffn_tokens"][0]} -> {run.model.ffn_tokens} ({mode} mode), '
              f'{n_params / 1e6:.2f}M parameters', flush=True)
    return record


def train_epoch(run: Run, batches: Iterable, should_stop: Callable[[], bool] = lambda: False,
                on_step: Callable = lambda *a: None) -> Dict:
    """engine.train_one_epoch with the run's parts, from the run's step; advances `run.step`. The
    learning rate and a 'ramp' growth's τ are stepped after every optimizer step."""
    parts = StepParts(run.optimizer, (run.scheduler, run.tau_ramp), run.loss_fn, run.device, run.mean, run.std,
                      seed=run.config.seed, rank=run.rank, amp_dtype=run.amp_dtype, scaler=run.scaler,
                      erasing=run.erasing, mixup=run.mixup, ema=run.ema, raw_model=run.model,
                      clip_grad=run.config.clip_grad, cuda_graph_steps=run.cuda_graphs)
    result = train_one_epoch(run.train_model, batches, parts, run.step, should_stop, on_step)
    run.step = result['step']
    return result


def train_epochs(run: Run, loader: Iterable, *, should_stop: Callable[[], bool] = lambda: False,
                 on_step: Callable = lambda *a: None, on_growth: Callable[[Dict], None] = lambda record: None,
                 view: Callable[[Iterable, int, int], Iterable] = lambda loader, epoch, skip: loader
                 ) -> Iterator[Dict]:
    """The epoch loop of the job and of every study: from the epoch of the run's step to the config's
    last, each epoch's planned growth at its start (then `on_growth(record)`), then its steps from
    where the run stands (a resumed run skips the batches it has trained: `loader.dataset.set_epoch`),
    through `view(loader, epoch, skipped)` (a progress bar). Yields each epoch's `train_one_epoch`
    result with its `epoch` and `seconds`; ends after an epoch that `should_stop` cut short."""
    upe = run.updates_per_epoch
    for epoch in range(run.step // upe, run.config.epochs):
        record = grow_at_epoch(run, epoch)
        if record is not None:
            on_growth(record)
        skip = run.step - epoch * upe
        if skip and run.data_position:  # where each loader worker stood at the save
            loader.dataset.set_epoch(epoch, skip_batches=skip, position=run.data_position)
        else:
            loader.dataset.set_epoch(epoch, skip_batches=skip)
        run.data_position = None
        t0 = time.perf_counter()
        result = train_epoch(run, view(loader, epoch, skip), should_stop, on_step)
        yield dict(result, epoch=epoch, seconds=time.perf_counter() - t0)
        if result['stopped']:
            return


def evaluate_checked(model: torch.nn.Module, loader: Iterable, **kw) -> Dict[str, float]:
    """engine.evaluate over a shard loader, whose every declared sample must have been evaluated:
    zero images, or fewer than the split holds, is a DataError naming the split, never a figure."""
    stream = getattr(loader, 'dataset', None)
    check = getattr(stream, 'check_unchanged', None)
    if check is not None:
        check()
    ev = evaluate(model, loader, **kw)
    if check is not None:
        stream.check_evaluated(ev['images'])
    return ev


def evaluate_run(run: Run, loader: Iterable) -> Dict[str, float]:
    """The model's (and the EMA's) loss, top-1 and top-5 on `loader`, as summary.csv columns
    (eval_loss, eval_top1, ..., eval_ema_top5): the one evaluation of the job, in training and with
    --eval-only; every sample of a shard loader is evaluated (`evaluate_checked`)."""
    kw = dict(device=run.device, mean=run.mean, std=run.std, amp_dtype=run.amp_dtype, distributed=run.world > 1)
    row = {}
    for prefix, model in (('eval', run.eval_model), ('eval_ema', run.eval_ema)):
        if model is not None:
            ev = evaluate_checked(model, loader, **kw)
            row.update({f'{prefix}_{k}': ev[k] for k in ('loss', 'top1', 'top5')})
    return row
