"""Fashion-MNIST in memory, and a short training run through the training job's own code: the
fixed, cheap setting in which the benchmarks compare variants (bench_init.py, growth_loss.py,
growth_experiment.py). The job itself (train_imagenet.py) reads the same images from shards."""
import torch

from tokenformer_vit.config import job_args
from tokenformer_vit.data import TensorBatches
from tokenformer_vit.engine import evaluate
from tokenformer_vit.fashion_mnist import load_fashion_mnist
from tokenformer_vit.train import build_run, train_epoch

MEAN, STD = (0.286,), (0.353,)  # of the training images, for the one grey channel


def load_tensors(data_dir=None):
    """Fashion-MNIST as uint8 (N, 1, 28, 28) images and int64 labels: train, test."""
    out = []
    for split in ('train', 'test'):
        images, labels = load_fashion_mnist(split, data_dir)
        out += [torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels).long()]
    return out


def test_top1(run, test_x, test_y, batch_size: int = 1000) -> float:
    """Top-1 (%) of the run's model on the test images."""
    batches = TensorBatches(test_x, test_y, batch_size, training=False)
    return evaluate(run.model, batches, device=run.device, mean=run.mean, std=run.std)['top1']


def train_and_test(model: torch.nn.Module, data, steps: int, batch_size: int = 128, lr: float = 2e-3,
                   seed: int = 0) -> float:
    """Train `model` for `steps` steps as the job would (timm's AdamW, warmup + cosine, label
    smoothing, random flips), on the first steps x batch_size training images; return test top-1."""
    train_x, train_y, test_x, test_y = data
    n = steps * batch_size
    batches = TensorBatches(train_x[:n], train_y[:n], batch_size, flip=True, seed=seed)
    args = job_args(model='tokenformer_vit_tiny', epochs=1, batch_size=batch_size, lr=lr, min_lr=1e-5,
                    warmup_lr=1e-5, warmup_epochs=0.1, weight_decay=0.05, smoothing=0.1, mixup=0.0, cutmix=0.0,
                    ema_decay=0.0, seed=seed)
    run = build_run(args, model, 10, batches.batches_per_rank, mean=MEAN, std=STD)
    train_epoch(run, batches)
    return test_top1(run, test_x, test_y)
