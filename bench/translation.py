"""Benchmark: Transformer training tokens/s, dense vs each sparse phase, and decoding sentences/s.

In one process, on real sentence pairs of the embedded En→De corpus (token-budget batches of
``--max-tokens`` padded tokens, as the translation task makes them), Adam with the reference's
betas and the task's label-smoothed loss:

* **training**: one optimizer step (forward, backward, ``Adam.step``, ``Sparsifier.step``) dense and
  with the masks each method has in force during its sparse phase at ``--sparsity``: GP/uniform
  fine-tuning (every matrix masked), an S-GaP step with the encoder (P1 of ``transformer_2``) grown,
  a P-GaP worker growing the decoder. Target tokens per second = target tokens of the batch / median
  step time; the ratio to dense is what matters (sparse weights in dense kernels cost the same
  FLOPs, so a ratio below 1 is the masking overhead).
* **decoding**: beam search (beam 4, incremental, cached keys/values) over a batch of source
  sentences, and the same search recomputing the whole prefix at every step (what decoding costs
  without the cache), in sentences per second; greedy decoding too.

Default: ``transformer_small`` at width 128 (the demo's family). ``--arch transformer_wmt_en_de``
measures the base model (d 512, 6+6 layers). ``--quick``: fewer repeats and a smaller batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, median_time, share  # noqa: E402

from sparsetrain.config import parse_config  # noqa: E402
from sparsetrain.methods import MaskEvent, apply_gap_event  # noqa: E402
from sparsetrain.runner.components import parse_selectors  # noqa: E402
from sparsetrain.sparsity import MaskSet, Sparsifier, partition_targets, prune, select_targets  # noqa: E402
from sparsetrain.tasks import build_task  # noqa: E402
from sparsetrain.tasks.translation_search import beam_search, greedy_decode  # noqa: E402

MATRICES = [r"(?:^|\.)(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)\.weight$",
            r"(?:^|\.)fc[12]\.weight$"]


def recompute_beam_search(model, src_tokens, src_lengths, **kwargs):
    """Beam search whose every step runs the decoder over the whole prefix at once (no key/value cache),
    as a decoder without incremental state must."""
    from sparsetrain.models.transformer import make_positions

    def uncached(prev_output_tokens, encoder_out, cache):
        positions = make_positions(prev_output_tokens, model.decoder.padding_idx)
        return model.decoder(prev_output_tokens, positions, encoder_out)[:, -1]

    model.decode_step = uncached
    try:
        return beam_search(model, src_tokens, src_lengths, **kwargs)
    finally:
        del model.decode_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 32 sentences decoded")
    parser.add_argument("--arch", default="transformer_small")
    parser.add_argument("--width", type=int, default=128, help="embed_dim (transformer_small only; FFN 2x)")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sentences", type=int, default=64, help="sentences decoded per measurement")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    repeats, sentences = (3, 32) if args.quick else (args.repeats, args.sentences)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    options = {"embed_dim": args.width, "ffn_dim": 2 * args.width} if args.arch == "transformer_small" else {}
    with tempfile.TemporaryDirectory() as cache:
        config = parse_config({
            "seed": 0, "task": {"kind": "translation",
                                "dataset": {"name": "embedded_en_de", "options": {"cache": cache, "n_train": 2000}},
                                "model": {"name": args.arch, "options": options},
                                "options": {"max_tokens": args.max_tokens}},
            "training": {"label_smoothing": 0.1}, "stages": [{"kind": "dense", "epochs": 1}]})
        task = build_task(config)
    torch.manual_seed(0)
    model = task.build_model().to(device)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = select_targets(model, parse_selectors(MATRICES), None)
    parts = [p.target_indices for p in partition_targets(targets, "transformer_2")]
    (step,), _ = (s[:1] for s in task.step_micro_batches(0))
    batch = task.to_device(task.collate_fn([task.train_set[i] for i in step[0]]), device)
    tokens = int(batch["ntokens"])
    s = args.sparsity

    def masks_for(phase: str) -> MaskSet | None:
        model.load_state_dict(dense_state)
        if phase.startswith("dense"):
            return None
        if phase == "uniform fine-tune":
            return prune(model, s, method="uniform", include=parse_selectors(MATRICES))
        masks = MaskSet(targets)
        grown = 0 if phase.startswith("S-GaP") else 1
        apply_gap_event(MaskEvent(0, "gap_init", s, grow=grown, seed=0), masks, parts)
        return masks

    print(f"{args.arch} ({sum(t.numel for t in targets):,} target weights in {len(targets)} matrices), batch of "
          f"{len(step[0])} pairs / {tokens} target tokens, sparsity {s}, {args.threads} thread(s), {device.type}")
    rows = []
    with OtherProcesses() as others:
        for phase in ("dense", "uniform fine-tune", "S-GaP step (P1 grown)", "P-GaP worker (P2 grown)", "dense again"):
            masks = masks_for(phase)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.997), eps=1e-9)
            sparsifier = Sparsifier(model, masks) if masks is not None else None

            def train_step():
                optimizer.zero_grad(set_to_none=True)
                loss, _ = task.loss(model, batch)
                loss.backward()
                optimizer.step()
                if sparsifier is not None:
                    sparsifier.step(optimizer)

            timing = median_time(train_step, repeats, warmup=3)
            rows.append((phase, tokens / timing.median_s))
        model.load_state_dict(dense_state)
        model.eval()
        sources = [task.eval_set[i]["source"] for i in range(sentences)]
        net = task.to_device(task.collate_fn([{"id": i, "source": src, "target": src} for i, src in enumerate(sources)]),
                             device)["net_input"]
        common = {"max_len_a": 1.5, "max_len_b": 10, "eos": task.eos, "pad": task.pad}
        decoders = {
            "beam 4, incremental": lambda: beam_search(model, net["src_tokens"], net["src_lengths"], beam=4, **common),
            "beam 4, recomputed prefix": lambda: recompute_beam_search(model, net["src_tokens"], net["src_lengths"],
                                                                       beam=4, **common),
            "greedy, incremental": lambda: greedy_decode(model, net["src_tokens"], net["src_lengths"], **common),
        }
        decoding = [(name, sentences / median_time(fn, max(1, repeats // 2), warmup=1).median_s)
                    for name, fn in decoders.items()]
    dense = (rows[0][1] + rows[-1][1]) / 2  # measured first and last: the order's drift shows in the two
    print("\n| training phase | target tokens/s | x dense (mean of the two dense rows) |\n|---|---|---|")
    for phase, rate in rows:
        print(f"| {phase} | {rate:,.0f} | {rate / dense:.3f} |")
    cached = decoding[0][1]
    print(f"\n| decoding ({sentences} sentences of the test split) | sentences/s | x beam 4 incremental |\n|---|---|---|")
    for name, rate in decoding:
        print(f"| {name} | {rate:,.1f} | {rate / cached:.3f} |")
    worst = min(rate for _, rate in rows[1:-1]) / dense
    print(f"\nslowest sparse phase: {worst:.3f} x dense tokens/s; the key/value cache makes beam search "
          f"{cached / decoding[1][1]:.2f}x faster than recomputing prefixes. "
          f"Other processes used {share(others)} of the CPUs.")


if __name__ == "__main__":
    main()
