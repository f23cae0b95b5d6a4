"""Prototypical networks (Snell, Swersky and Zemel, NeurIPS 2017) on
fewshot's exported episodes: a method fewshot does not have, trained on
exported training episodes, scored on the exported test episodes, written
as per-query predictions for `bench import` (examples/pytorch/README.md).

The embedding is the paper's: four blocks of 3x3 conv (64 filters), batch
norm, ReLU and 2x2 max-pool; a query's class is the nearest prototype (the
mean embedding of its class's support images) in squared Euclidean
distance; Adam at 1e-3. The paper trains Omniglot with 60-way episodes;
this example trains on the exported episodes as they are (5-way).

    python protonet.py --train exports/train --test exports/test --out protonet-scores.csv
"""

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot_export import load, write_predictions


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
    )


class Embedding(nn.Module):
    def __init__(self, channels, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            block(channels, hidden), block(hidden, hidden), block(hidden, hidden), block(hidden, hidden)
        )

    def forward(self, x):
        return self.net(x).flatten(1)


def logits(model, sx, sy, qx, ways):
    """Negative squared distances of each query to each class prototype."""
    z = model(torch.cat([sx, qx]))
    zs, zq = z[: len(sx)], z[len(sx):]
    protos = torch.stack([zs[sy == c].mean(0) for c in range(ways)])
    return -torch.cdist(zq, protos).pow(2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="export of training episodes")
    p.add_argument("--test", required=True, help="export of the benchmark's test episodes")
    p.add_argument("--out", required=True, help="scores CSV for `bench import`")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training episodes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    train, _ = load(a.train)
    test, meta = load(a.test)
    ways = int(meta["ways"])
    model = Embedding(train["support_x"].shape[2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(a.seed)
    t0 = time.time()
    model.train()
    n = train["support_x"].shape[0]
    for epoch in range(a.epochs):
        total = 0.0
        for e in order.permutation(n):
            sx, sy = torch.from_numpy(train["support_x"][e]), torch.from_numpy(train["support_y"][e])
            qx, qy = torch.from_numpy(train["query_x"][e]), torch.from_numpy(train["query_y"][e])
            loss = F.cross_entropy(logits(model, sx, sy, qx, ways), qy)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: mean training loss {total / n:.4f} ({time.time() - t0:.0f}s)")
    # Test: batch norm with the running statistics of training (model.eval(),
    # as jakesnell/prototypical-networks evaluates), so each query is
    # classified on its own: non-transductive, as fewshot-5way1shot tests.
    predictions, correct = [], 0
    model.eval()
    with torch.no_grad():
        for e in range(test["support_x"].shape[0]):
            sx, sy = torch.from_numpy(test["support_x"][e]), torch.from_numpy(test["support_y"][e])
            qx, qy = torch.from_numpy(test["query_x"][e]), torch.from_numpy(test["query_y"][e])
            pred = logits(model, sx, sy, qx, ways).argmax(1)
            correct += (pred == qy).float().mean().item()
            predictions.append(pred.tolist())
    write_predictions(a.out, predictions, meta)
    print(f"test accuracy {100 * correct / len(predictions):.2f}% on {len(predictions)} episodes; wrote {a.out}")


if __name__ == "__main__":
    main()
