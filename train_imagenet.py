"""Train a Tokenformer-ViT on ImageNet (or any) WebDataset shards; see tokenformer_vit/train.py.

    python train_imagenet.py --config configs/demo.yaml
"""
import sys

from tokenformer_vit.cli import main

if __name__ == '__main__':
    sys.exit(main())
