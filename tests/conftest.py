"""Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; the job's tests
share one set of generated shards per test module.

`triton.jit` reads TRITON_INTERPRET when a kernel is defined, so it is set here, before any test
module imports tokenformer_vit.triton_pattention. On a CUDA machine the kernels compile for the GPU.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """48 training and 16 validation images of 4 colour classes, as shards of 8."""
    return colour_shards(tmp_path_factory.mktemp('shards'), classes=4, per_class=dict(train=12, validation=4))


def colour_shards(root, classes, per_class, seed=0):
    """Shards of 8 (under root/wds) of JPEGs of `classes` colour classes, per_class[split] images each."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c in range(classes):
            folder = root / 'images' / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(count):
                a = np.zeros((36, 40, 3), np.uint8)
                a[..., c % 3] = 60 + 60 * (c // 3) + rng.integers(0, 40, (36, 40), dtype=np.uint8)
                Image.fromarray(a).save(folder / f'{i}.jpg')
        from tokenformer_vit.make_shards import ShardSpec, make_shards
        make_shards(str(root / 'images' / split), split, root / 'wds', ShardSpec(shard_size=8, workers=1,
                                                                                 progress=False))
    return root / 'wds'
