"""Run by tests/test_multiprocess.py under launch/local.sh: each process writes the example indices of its
share of the first training batches, as the trainer reads them, to OUT.<process>.json."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsmooth import cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    cli.add_distributed_arguments(p)
    args = p.parse_args()
    cli.start_jax(args)
    import jax

    from jaxsmooth import data, parallel

    ds = data.load("digits")
    batches = data.train_batches(ds.train, global_batch_size=args.batch, seed=0, augment="none",
                                 process_index=jax.process_index(), process_count=jax.process_count(), num_workers=0)
    local = [next(batches) for _ in range(args.steps)]
    mesh = parallel.make_mesh()
    # The global batch as the train step sees it: this process's rows of the sharded array.
    placed = [parallel.shard_batch(mesh, b) for b in local]
    rows = [sorted(int(i) for shard in b["index"].addressable_shards for i in shard.data) for b in placed]
    with open(f"{args.out}.{jax.process_index()}.json", "w") as f:
        json.dump({"local": [b["index"].tolist() for b in local], "placed": rows,
                   "processes": jax.process_count(), "devices": jax.device_count()}, f)


if __name__ == "__main__":
    main()
