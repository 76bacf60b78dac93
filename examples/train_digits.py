"""Train a small CNN built from poolops modules on scikit-learn's bundled digits
(8x8 images, no download), next to the same network built from torch.nn.

    python examples/train_digits.py [--epochs 30] [--seed 0]

Prints the loss curve of both networks, their test accuracy and training time.
"""
import argparse
import time

import torch
from sklearn.datasets import load_digits

import poolops


def make_net(nn):
    """The same architecture from a module namespace (torch.nn or poolops.nn)."""
    Conv2d = getattr(nn, "Conv2d", torch.nn.Conv2d)
    return torch.nn.Sequential(
        Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), nn.MaxPool2d(2),            # 8x8 -> 4x4
        Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), nn.AvgPool2d(2),           # 4x4 -> 2x2
        Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.ReLU(),                  # strided conv: 2x2 -> 1x1
        nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )


def data(seed):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return (x[perm[:split]], y[perm[:split]]), (x[perm[split:]], y[perm[split:]])


def train(net, train_set, test_set, epochs, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = train_set
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        accuracy = (net(test_set[0]).argmax(1) == test_set[1]).float().mean().item()
    return losses, accuracy, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train_set, test_set = data(args.seed)
    results = {}
    for label, nn in [("poolops", poolops.nn), ("torch.nn", torch.nn)]:
        torch.manual_seed(args.seed)
        results[label] = train(make_net(nn), train_set, test_set, args.epochs, args.seed)
    print("epoch  " + "  ".join(f"{label:>9} loss" for label in results))
    for e in range(args.epochs):
        print(f"{e + 1:5d}  " + "  ".join(f"{results[label][0][e]:14.4f}" for label in results))
    for label, (_, acc, secs) in results.items():
        print(f"{label:9s} test accuracy {100 * acc:.2f}%  training time {secs:.2f} s")
    return {label: acc for label, (_, acc, _) in results.items()}


if __name__ == "__main__":
    main()
