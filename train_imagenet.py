"""Train a Tokenformer-ViT on ImageNet (or any) WebDataset shards; see tokenformer_vit/train.py.

    python train_imagenet.py --config configs/demo.yaml
"""
import sys

from tokenformer_vit.train import cli

if __name__ == '__main__':
    sys.exit(cli())
