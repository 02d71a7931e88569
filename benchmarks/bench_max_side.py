"""What `make_shards --max-side N` buys and costs on full-size photographs: the share of images it
re-encodes, the shards' size, one-core decoding speed of the two sets (taking turns, medians), and how
far the re-encoded images' evaluation input (resize to 256, centre crop 224, bicubic; the model's
input) moves from the original's.

    python benchmarks/bench_max_side.py [--images ../shared/data/imagenet-sample-100] [--max-side 512] [--json out.json]
"""
import argparse
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from tokenformer_vit.make_shards import ShardSpec, make_shards
from bench_data import report
from tokenformer_vit.config import data_config, job_args
from tokenformer_vit.transforms import EvalTransform, decode_rgb


def samples(root: Path) -> dict:
    """{original file name: stored JPEG bytes} of a shard folder's train split."""
    info = json.loads((root / '_info.json').read_text())['splits']['train']
    out = {}
    for name in info['filenames']:
        with tarfile.open(root / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in {n.split('.', 1)[0] for n in members}:
            out[json.loads(members[f'{key}.json'])['file']] = members[f'{key}.jpg']
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', default='../shared/data/imagenet-sample-100')
    p.add_argument('--max-side', type=int, default=512)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--json', default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for label, max_side in (('original', None), ('max_side', args.max_side)):
            root = Path(tmp) / label
            make_shards(args.images, 'train', root, ShardSpec(max_side=max_side, progress=False))
            sets[label] = samples(root)
            sets[label + '_bytes'] = sum(f.stat().st_size for f in root.glob('*.tar'))
    original, small = sets['original'], sets['max_side']
    changed = sorted(f for f in original if original[f] != small[f])
    rates = {'original': [], 'max_side': []}
    for _ in range(args.rounds):
        for label in rates:
            t0 = time.perf_counter()
            for data in sets[label].values():
                decode_rgb(data)
            rates[label].append(len(sets[label]) / (time.perf_counter() - t0))
    evaluate = EvalTransform(data_config(job_args(data_dir='.')).recipe)  # the job's, for its default model (224)
    diffs = [np.abs(evaluate(decode_rgb(original[f])).astype(float) - evaluate(decode_rgb(small[f]))) for f in changed]
    res = dict(images=len(original), re_encoded=len(changed), max_side=args.max_side,
               shard_bytes_original=sets['original_bytes'], shard_bytes_max_side=sets['max_side_bytes'],
               decode_img_s_original=statistics.median(rates['original']),
               decode_img_s_max_side=statistics.median(rates['max_side']),
               eval_input_mean_abs_diff_of_re_encoded=float(np.mean([d.mean() for d in diffs])) if diffs else 0.0,
               eval_input_max_mean_abs_diff=float(max(d.mean() for d in diffs)) if diffs else 0.0)
    res['decode_speedup'] = res['decode_img_s_max_side'] / res['decode_img_s_original']
    report(res, args.json)


if __name__ == '__main__':
    main()
