"""Fashion-MNIST as in-memory tensors and a short AdamW + warmup-cosine training loop: the fixed,
cheap setting the layer-level benchmarks (bench_init.py, growth_loss.py) compare variants in.
(The training job, train_imagenet.py, reads shards instead.)"""
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

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
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=steps // 10, warmup_lr_init=1e-5, t_in_epochs=False)
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
