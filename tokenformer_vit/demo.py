"""A short, real demo of the model until the training job lands: train a small Tokenformer-ViT on
Fashion-MNIST for a few hundred steps on the CPU and report its test top-1.

    python -m tokenformer_vit.demo [--config configs/demo_model.yaml] [--steps 400] [--batch-size 128]

A YAML config sets the flags' defaults (keys are the flags' names with underscores); flags win.
"""
import argparse
import sys
import time

import numpy as np
import torch
import yaml
import torch.nn.functional as F
import timm
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import tokenformer_vit  # noqa: F401
from tokenformer_vit.checkpoint import save_atomic
from tokenformer_vit.fashion_mnist import load_fashion_mnist

MEAN, STD = 0.286, 0.353


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images.copy()).float().div_(255).sub_(MEAN).div_(STD)).unsqueeze(1)


def load_tensors(data_dir=None):
    """Fashion-MNIST as normalised (N, 1, 28, 28) float tensors and int64 labels: train, test."""
    out = []
    for split in ('train', 'test'):
        images, labels = load_fashion_mnist(split, data_dir)
        out += [to_tensor(images), torch.from_numpy(labels)]
    return out


def train_and_test(model: torch.nn.Module, data, steps: int, batch_size: int = 128, lr: float = 2e-3,
                   seed: int = 0, log_every: int = 50) -> float:
    """Train with AdamW and a warmup-cosine schedule for `steps` steps; return test top-1 (%)."""
    train_x, train_y, test_x, test_y = data
    opt = create_optimizer_v2(model, 'adamw', lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=steps // 10, warmup_lr_init=1e-5)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_x), generator=gen)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = order[(step * batch_size + torch.arange(batch_size)) % len(order)]
        x, y = train_x[idx], train_y[idx]
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
        if log_every and (step % log_every == 0 or step == steps - 1):
            seen = (step + 1) * batch_size
            print(f'step {step:4d}  loss {loss.item():.3f}  {seen / (time.perf_counter() - t0):.0f} img/s', flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_x), 500):
            correct += (model(test_x[i:i + 500]).argmax(-1) == test_y[i:i + 500]).sum().item()
    return 100.0 * correct / len(test_x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='tokenformer_vit_tiny')
    parser.add_argument('--depth', type=int, default=6)
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-dir', default=None, help='folder of the Fashion-MNIST .gz files')
    parser.add_argument('--config', default=None, help='YAML file of flag defaults')
    parser.add_argument('--output', default=None, help='write the trained model here, as a timm checkpoint')
    args, _ = parser.parse_known_args()
    if args.config:
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            sys.exit(f'{args.config}: unknown key(s) {", ".join(unknown)}: use the flags of --help, with underscores.')
        parser.set_defaults(**cfg)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_tensors(args.data_dir)
    model = timm.create_model(args.model, img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=args.depth)
    params = sum(p.numel() for p in model.parameters())
    print(f'{args.model} (depth {args.depth}, 28x28 Fashion-MNIST, 7x7 patches): {params / 1e6:.2f}M parameters')
    t0 = time.perf_counter()
    top1 = train_and_test(model, data, args.steps, args.batch_size, args.lr, args.seed)
    print(f'Fashion-MNIST test top-1: {top1:.2f}% after {args.steps} steps '
          f'({args.steps * args.batch_size / len(data[0]):.2f} epochs, {time.perf_counter() - t0:.0f} s)')
    if args.output:
        model_args = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=args.depth)
        save_atomic({'state_dict': model.state_dict(), 'arch': args.model, 'model_args': model_args,
                     'args': vars(args), 'epoch': 0, 'metric': top1, 'version': 2}, args.output)
        print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
