"""Train a small MLP on scikit-learn's digits with Lightning, made sparse by sparsetrain's ``SparsityCallback``.

    python examples/lightning_prune.py                    # GMP to 80% sparsity, 30 epochs (seconds on a CPU)
    python examples/lightning_prune.py --method rigl      # RigL at a constant 80% sparsity
    python examples/lightning_prune.py --smoke            # a few steps, to check the wiring

Prints the test accuracy and the exact sparsity (pruned / targeted weights, counted from the weights).
Needs ``pip install sparsetrain[lightning]`` (or any ``lightning`` 2.x); the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from sparsetrain.data.digits import load_digits_split
from sparsetrain.integrations.lightning import SparsityCallback


class DigitsMLP(pl.LightningModule):
    def __init__(self, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["gmp", "rigl"], default="gmp")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="2 epochs of 3 batches each")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    data = load_digits_split(test_fraction=0.3, seed=0)
    train = DataLoader(data.train, batch_size=64, shuffle=True)
    test = DataLoader(data.test, batch_size=512)
    epochs = 2 if args.smoke else args.epochs
    fields = {"update_every": 5} if args.method == "rigl" else {}
    callback = SparsityCallback(method=args.method, sparsity=args.sparsity, epochs=epochs, **fields)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=3 if args.smoke else None, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    model = DigitsMLP()
    trainer.fit(model, train)
    accuracy = trainer.test(model, test, verbose=False)[0]["test_acc"]

    masks = callback.masks
    zeros = sum(int((param == 0).sum()) for param in masks.params)
    print(f"method={args.method} test accuracy {accuracy:.4f}")
    print(f"sparsity {zeros}/{masks.numel()} = {zeros / masks.numel():.4f} of the targeted weights "
          f"(masks: {masks.pruned_count()} pruned, target {args.sparsity})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
