"""The studies' data: real data sets in memory, fed to the training job's own Run without shards.

    fashion-mnist: 60,000 / 10,000 28×28 grey images, random flips;
    cifar10:       50,000 / 10,000 32×32 colour images, random flips and shifts of up to 4 pixels
                   (CIFAR's usual pad-and-crop); each split in one fixed random order, since the
                   class folders come one class after another.

`TensorBatches` hands them to `run.train_epochs` as the shard loader would; `train_and_test` is the
fixed, cheap run in which bench_init.py compares variants. The job itself (train_imagenet.py) reads
the same images from shards.
"""
import torch

from tokenformer_vit.cifar10 import load_cifar10
from tokenformer_vit.config import study_config
from tokenformer_vit.engine import evaluate
from tokenformer_vit.fashion_mnist import load_fashion_mnist
from tokenformer_vit.run import build_run, train_epochs

DATASETS = {
    'fashion-mnist': dict(mean=(0.286,), std=(0.353,), shape=(1, 28, 28), augment=dict(flip=True)),
    'cifar10': dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), shape=(3, 32, 32),
                    augment=dict(flip=True, pad_crop=4)),
}
MEAN, STD = DATASETS['fashion-mnist']['mean'], DATASETS['fashion-mnist']['std']


def load_dataset(name: str):
    """(train images, train labels, test images, test labels) of `name`, as tensors."""
    if name not in DATASETS:
        raise SystemExit(f'Unknown data set {name!r}: use one of {", ".join(DATASETS)}.')
    out = []
    for split in ('train', 'test'):
        if name == 'cifar10':
            images, labels = load_cifar10(split)
            # the folders come class by class: a fixed shuffle, so that any prefix (--quick's) holds every class
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
            images = torch.from_numpy(images).permute(0, 3, 1, 2)[order].contiguous()
            labels = labels[order.numpy()]
        else:
            images, labels = load_fashion_mnist(split)
            images = torch.from_numpy(images.copy()).unsqueeze(1)
        out += [images, torch.from_numpy(labels).long()]
    return out


class TensorBatches:
    """Batches of images held in memory, where a study needs speed more than the shard loader.

    uint8 N×C×H×W images and int64 labels, as the shard loader hands them to the engine. Training
    order is reshuffled every epoch from (seed, epoch), with a random horizontal flip per image if
    `flip` and a random shift of up to `pad_crop` pixels each way (zero-padded, CIFAR's usual crop)
    if `pad_crop`; the last partial batch is dropped. `set_epoch(epoch, skip_batches)` and
    `batches_per_rank` are the shard loader's, so that the job's loop drives either one.
    """

    def __init__(self, images, labels, batch_size: int, training: bool = True, flip: bool = False, seed: int = 0,
                 pad_crop: int = 0):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f'TensorBatches takes uint8 N×C×H×W images, not {images.dtype} of shape '
                            f'{tuple(images.shape)}: convert them with (x * 255).round().to(torch.uint8).')
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.training, self.flip, self.seed, self.pad_crop = training, flip, seed, pad_crop
        self.epoch, self.skip = 0, 0
        n = len(images)
        self.batches_per_rank = n // batch_size if training else -(-n // batch_size)
        self.dataset = self

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self):
        n = len(self.images)
        order, flips, shifts, p = torch.arange(n), None, None, self.pad_crop
        if self.training:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5 if self.flip else None
            shifts = torch.randint(0, 2 * p + 1, (n, 2), generator=gen) if p else None
        for b in range(self.skip, self.batches_per_rank):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[rows]
            x = self.images[idx]
            if flips is not None:
                x = torch.where(flips[rows, None, None, None], x.flip(-1), x)
            if shifts is not None:  # one gather for the batch: rows i..i+h, columns j..j+w of each padded image
                (b_, c, h, w), (i, j) = x.shape, shifts[rows].T
                padded = torch.nn.functional.pad(x, (p, p, p, p))
                ys = (i[:, None] + torch.arange(h))[:, None, :, None]
                xs = (j[:, None] + torch.arange(w))[:, None, None, :]
                x = padded[torch.arange(b_)[:, None, None, None], torch.arange(c)[None, :, None, None], ys, xs]
            yield x, self.labels[idx]
        self.skip = 0


def test_top1(run, test_x, test_y, batch_size: int = 1000) -> float:
    """Top-1 (%) of the run's model on the test images."""
    batches = TensorBatches(test_x, test_y, batch_size, training=False)
    return evaluate(run.model, batches, device=run.device, mean=run.mean, std=run.std)['top1']


def train_and_test(model: torch.nn.Module, data, steps: int, batch_size: int = 128, lr: float = 2e-3,
                   seed: int = 0) -> float:
    """Train `model` for `steps` steps as the job would (timm's AdamW, warmup + cosine, label
    smoothing, random flips), on the first steps x batch_size Fashion-MNIST training images; return
    test top-1."""
    train_x, train_y, test_x, test_y = data
    n = steps * batch_size
    batches = TensorBatches(train_x[:n], train_y[:n], batch_size, flip=True, seed=seed)
    config = study_config(model='tokenformer_vit_tiny', epochs=1, batch_size=batch_size, lr=lr, min_lr=1e-5,
                          warmup_lr=1e-5, warmup_epochs=0.1, weight_decay=0.05, smoothing=0.1, mixup=0.0, cutmix=0.0,
                          reprob=0.0, ema_decay=0.0, seed=seed)
    run = build_run(config, model, 10, batches.batches_per_rank)
    run.mean, run.std = MEAN, STD  # Fashion-MNIST's normalisation
    for _ in train_epochs(run, batches):
        pass
    return test_top1(run, test_x, test_y)
