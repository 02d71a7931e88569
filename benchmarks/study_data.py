"""The real data sets of the growth studies, in memory (uint8 N×C×H×W images, int64 labels), with
the normalisation and the training augmentation that each study uses (data.TensorBatches options).

    fashion-mnist: 60,000 / 10,000 28×28 grey images, random flips;
    cifar10:       50,000 / 10,000 32×32 colour images, random flips and shifts of up to 4 pixels
                   (CIFAR's usual pad-and-crop); each split in one fixed random order, since the
                   class folders come one class after another.
"""
import torch

from tokenformer_vit.cifar10 import load_cifar10
from tokenformer_vit.fashion_mnist import load_fashion_mnist

DATASETS = {
    'fashion-mnist': dict(mean=(0.286,), std=(0.353,), shape=(1, 28, 28), augment=dict(flip=True)),
    'cifar10': dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), shape=(3, 32, 32),
                    augment=dict(flip=True, pad_crop=4)),
}


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
