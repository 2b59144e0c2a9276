"""Train an example model on a bundled dataset and save a sparsekit checkpoint.

python examples/train.py lenet_300_100 --data mnist5k --epochs 6 -o lenet.pt
python examples/train.py small_cnn --data mnist5k --epochs 4 -o cnn.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

import sparsekit  # noqa: E402
from examples.models import MODELS  # noqa: E402
from sparsekit.data import load_data  # noqa: E402
from sparsekit.train import evaluate  # noqa: E402

INPUT = {"lenet_300_100": [1, 784], "small_cnn": [1, 1, 28, 28], "resnet_small": [1, 1, 28, 28], "mlp": [1, 64]}


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", default=None, help="checkpoint path (default: MODEL.pt)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    shape = INPUT[args.model]
    kwargs = {"in_features": 64} if args.model == "mlp" and args.data == "digits" else {}
    if args.data == "digits" and args.model != "lenet_300_100" and args.model != "mlp":
        kwargs["image_size"] = 8
        shape = [1, 1, 8, 8]
    if args.data == "digits" and args.model == "lenet_300_100":
        kwargs, shape = {"in_features": 64}, [1, 64]
    model = MODELS[args.model](**kwargs)
    data = load_data(args.data, batch_size=64, seed=args.seed, input_shape=shape)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        for x, y in data.train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        acc = evaluate(model, data.val)["accuracy"]
        print(f"epoch {epoch + 1}: val accuracy {acc:.4f} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    out = Path(args.output or f"{args.model}.pt")
    sparsekit.save_model(model, out, factory=f"examples.models:{args.model}", kwargs=kwargs, input_shape=shape)
    print(f"saved {out} (val accuracy {acc:.4f})")
    return acc


if __name__ == "__main__":
    main()
