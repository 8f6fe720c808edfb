"""Machine translation with a fairseq-compatible Transformer: label-smoothed cross-entropy per target
token for training, beam search and sacreBLEU for evaluation.

Data (``task.dataset.name``):

* ``fairseq``: a ``fairseq-preprocess`` output directory (``.bin``/``.idx`` in the mmap or the legacy
  ``TNTIDX`` format, ``dict.{lang}.txt``); ``bpe`` says how its text was segmented (subword-nmt's
  ``@@`` joins for WMT14, the reference's data);
* ``bpe_text``: whitespace-tokenized (BPE'd) parallel text ``{split}.{lang}`` with a dictionary;
* ``raw_text``: raw parallel text and a ``sentencepiece`` model (``spm_model``);
* ``embedded_en_de``: the offline English→German corpus built from ``num2words`` and ``pycountry``
  text (:mod:`sparsetrain.data.translation.embedded`), segmented by a sentencepiece model trained on
  its training split; the demo's and the tests' data.

Training batches are token budgets (``task.options.max_tokens`` per batch, fairseq's
``--max-tokens``), ``training.update_freq`` of them per optimizer step over all processes (see
:mod:`sparsetrain.data.token_batching`). The loss is label-smoothed cross-entropy
(``training.label_smoothing``, fairseq's ``label_smoothed_cross_entropy``: ``(1 - eps - eps/(V-1))
* nll + eps/(V-1) * sum_v -log p_v`` per token, padding ignored) summed over a step's target
tokens and divided by their number, so every token weighs the same whatever rank or micro-batch
it is on.

Metrics (names as :meth:`TranslationTask.evaluate` returns them): ``bleu`` (sacreBLEU, lowercased as
the reference's ``-lc``; the primary metric, higher is better), ``bleu_cased``, ``chrf``, ``loss``
(cross-entropy per target token in nats, no smoothing) and ``ppl`` (``exp(loss)``). BLEU decodes the
evaluation split with beam search (``beam``, ``lenpen``, ``max_len_a``, ``max_len_b``), removes the
segmentation, detokenizes and scores against the plain references (the raw text of the split, or
``references``: a file, one line per sentence); the sacreBLEU signatures are recorded in the run's
``summary.json`` (``primary.bleu_signature``, ``primary.chrf_signature``).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from ..data import token_batching
from ..data.base import embedded_cache_dir
from ..errors import UserError
from ..methods.schema import StrictModel
from .base import Task, parse_options
from .registry import register_task
from .translation_bleu import corpus_scores, detokenize

if TYPE_CHECKING:
    from ..config import RunConfig

DATASETS = ("embedded_en_de", "fairseq", "bpe_text", "raw_text")


class TranslationDataOptions(StrictModel):
    """``task.dataset.options`` of the translation task."""

    path: str | None = Field(None, description="the data directory (every dataset but embedded_en_de)")
    src_lang: str | None = Field(None, description="source language code as in the file names (en)")
    tgt_lang: str | None = Field(None, description="target language code (de)")
    spm_model: str | None = Field(None, description="raw_text: the sentencepiece model file")
    dictionary: str | None = Field(None, description="the dict.txt (fairseq format) a checkpoint was trained with "
                                   "(sparsetrain eval --dict): bpe_text encodes with it (default: the directory's); "
                                   "every dataset checks that a loaded fairseq checkpoint without dictionaries fits it")
    bpe: Literal["sentencepiece", "subword_nmt", "none"] | None = Field(
        None, description="how the text was segmented, for BLEU (default: sentencepiece for raw_text and "
        "embedded_en_de, subword_nmt otherwise)")
    references: str | None = Field(None, description="plain references of the evaluation split, one per line "
                                   "(default: the split's raw text, else its detokenized targets)")
    cache: str | None = Field(None, description="embedded_en_de: where the corpus and its sentencepiece model "
                              "are written (default: $SPARSETRAIN_CACHE or ~/.cache/sparsetrain)")
    n_train: int = Field(12000, ge=10)
    n_valid: int = Field(500, ge=1)
    n_test: int = Field(500, ge=1)
    vocab_size: int = Field(1000, ge=50, description="embedded_en_de: sentencepiece vocabulary")
    plan: PlanFacts | None = Field(None, description="sizes `plan` uses when the data is not on this machine")


class PlanFacts(StrictModel):
    """What ``plan`` assumes about a dataset that is not on this machine (the paper configs' WMT14)."""

    train_pairs: int = Field(ge=1)
    train_tokens: int = Field(ge=1, description="target tokens of the training split, end-of-sentence included")
    vocab_size: int = Field(ge=8, description="dictionary size (the joined dictionary's)")
    steps_per_epoch: int = Field(ge=1, description="optimizer steps of max_tokens x update_freq per epoch")


class TranslationOptions(StrictModel):
    """``task.options`` of the translation task: batching and decoding."""

    max_tokens: int = Field(4096, ge=1, description="padded tokens per batch (fairseq --max-tokens)")
    max_sentences: int | None = Field(None, ge=1, description="sentence pairs per batch at most")
    eval_split: Literal["valid", "test"] = "test"
    eval_sentences: int = Field(64, ge=1, description="sentences per evaluation/decoding batch")
    beam: int = Field(4, ge=1)
    lenpen: float = Field(1.0, ge=0)
    max_len_a: float = Field(0.0, ge=0, description="hypotheses end by a*source length + b tokens")
    max_len_b: int = Field(200, ge=1)




@register_task("translation")
class TranslationTask(Task):
    PRIMARY = ("bleu", "max")
    METRIC_LABEL: ClassVar[dict[str, Any]] = {"title": "BLEU (sacreBLEU, lowercased)", "short": "BLEU",
                                              "log": "BLEU", "percent": False}
    COUNT_UNIT = "tokens"
    GLOBAL_SIZE_IS_COUNT = True
    DEMO = "../configs/demo_translation"
    """``sparsetrain demo --task translation``: dense, GP, S-GaP and P-GaP (kappa 2: encoder | decoder) at 0.8
    and 0.9 on the embedded English→German corpus (3,000 training pairs) with ``transformer_small`` at width 64,
    10 epochs per row, the 32 attention/FFN matrices as targets, the reference's recipe scaled down."""
    DEMO_DESCRIPTION = ("BLEU: sacreBLEU (lowercased, as the reference) of beam-4 translations of the embedded "
                        "English→German test split (400 sentences), final epoch; equal epoch budget (10) per row.")

    def __init__(self, config: RunConfig, data: Any, data_options: TranslationDataOptions,
                 options: TranslationOptions) -> None:
        eval_set = data.test if options.eval_split == "test" else data.valid
        if eval_set is None:
            raise UserError(f"task.options.eval_split={options.eval_split!r}: the data has no {options.eval_split} "
                            "split; valid: a split the data directory holds")
        super().__init__(config, data.train, eval_set)
        self.data, self.data_options, self.options = data, data_options, options
        self.src_dict, self.tgt_dict = data.src_dict, data.tgt_dict
        self.pad, self.eos = self.tgt_dict.pad(), self.tgt_dict.eos()
        self.bpe = data_options.bpe or ("sentencepiece" if config.task.dataset.name in ("raw_text", "embedded_en_de")
                                        else "subword_nmt")
        from ..data.translation import collate

        self.collate_fn = partial(collate, pad_idx=self.pad, eos_idx=self.eos)
        self.references = self._references()
        self.batches = token_batching.whole_steps(
            token_batching.token_batches(self.train_set.src_sizes, self.train_set.tgt_sizes, options.max_tokens,
                                         config.seed, options.max_sentences),
            config.training.update_freq)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        cls.check_catalog(config, "translation dataset", "Transformer")
        parse_options(TranslationDataOptions, config.task.dataset.options, "task.dataset.options")
        parse_options(TranslationOptions, config.task.options, "task.options")

    @classmethod
    def build(cls, config: RunConfig) -> TranslationTask:
        data_options = parse_options(TranslationDataOptions, config.task.dataset.options, "task.dataset.options")
        options = parse_options(TranslationOptions, config.task.options, "task.options")
        return cls(config, read_data(config.task.dataset.name, data_options), data_options, options)

    def build_model(self) -> nn.Module:
        from ..models.transformer import ARCHS, build_transformer

        name, options = self.config.task.model.name, self.config.task.model.options
        shared = options.get("share_all_embeddings", ARCHS[name].share_all_embeddings)
        if shared and not self.data.joined:
            raise UserError(f"task.model.name={name!r} shares its source and target embeddings, but the data has "
                            "separate dictionaries; valid: a joined dictionary, or "
                            "task.model.options.share_all_embeddings=false")
        return build_transformer(name, vocab_size=len(self.tgt_dict), padding_idx=self.pad,
                                 src_vocab_size=len(self.src_dict), **options)

    @classmethod
    def plan_facts(cls, config: RunConfig) -> tuple[Any, ...] | None:
        """From ``task.dataset.options.plan`` when the data directory is absent (the paper configs' WMT14)."""
        options = parse_options(TranslationDataOptions, config.task.dataset.options, "task.dataset.options")
        if options.plan is None or (options.path is not None and Path(options.path).is_dir()):
            return None
        from ..models.transformer import build_transformer

        with torch.device("meta"):  # shapes only: plan counts and lays out, it never computes a value
            model = build_transformer(config.task.model.name, vocab_size=options.plan.vocab_size, padding_idx=1,
                                      **config.task.model.options)
        return options.plan.train_tokens, model, _one_token_pair(2), options.plan.steps_per_epoch

    @classmethod
    def catalog(cls) -> dict[str, list[str]]:
        from ..models.transformer import ARCHS

        return {"datasets": list(DATASETS), "models": list(ARCHS)}

    @classmethod
    def describe_batch(cls, config: RunConfig) -> str:
        options = parse_options(TranslationOptions, config.task.options, "task.options")
        return f"{config.training.update_freq} batch(es) of <= {options.max_tokens} padded tokens"

    def example_input(self) -> Any:
        """A one-token source and target: the target FLOPs of a pair scale with its tokens, so the runner's
        FLOPs per "example" are FLOPs per target token here, the unit its step sizes count."""
        return _one_token_pair(self.eos)

    def epoch_size(self) -> int:
        """Target tokens of the training split (end-of-sentence included)."""
        return int(self.train_set.tgt_sizes.sum())

    # ---- batches ------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return len(self.batches) // self.config.training.update_freq

    def step_micro_batches(self, epoch: int, stream: int = 0, rank: int = 0,
                           world_size: int = 1) -> tuple[list[list[list[int]]], list[int]]:
        return token_batching.step_batches(self.batches, self.train_set.tgt_sizes, self.config.training.update_freq,
                                           self.config.seed, epoch, stream, rank, world_size)

    def epoch_batches(self, epoch: int, stream: int = 0, rank: int = 0,
                      world_size: int = 1) -> tuple[list[list[int]], list[int]]:
        """Each step's micro-batches of this rank as one list (sizes: the step's target tokens)."""
        micro, tokens = self.step_micro_batches(epoch, stream, rank, world_size)
        return [[i for batch in step for i in batch] for step in micro], tokens

    def batch_inputs(self, batch: Any) -> Any:
        return batch["net_input"]["src_tokens"]

    def eval_loader(self, batch_size: int, **loading: Any) -> DataLoader:
        """The evaluation split in batches of ``task.options.eval_sentences`` pairs of similar source length
        (decoding wastes less on padding); :meth:`evaluate` puts hypotheses back in corpus order. ``loading``:
        as :meth:`Task.eval_loader`."""
        sizes = self.eval_set.src_sizes
        order = sorted(range(len(sizes)), key=lambda i: (int(sizes[i]), i))
        step = self.options.eval_sentences
        return DataLoader(self.eval_set, batch_sampler=[order[i: i + step] for i in range(0, len(order), step)],
                          collate_fn=self.collate_fn, **loading)

    # ---- loss and metrics -----------------------------------------------------------------------
    def token_losses(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(smoothed loss sum, nll sum, non-pad target tokens)`` of ``logits`` (B, T, V) against ``target`` (B, T)."""
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        keep = target.ne(self.pad)
        nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nll_sum = nll.masked_select(keep).sum()
        if smoothing == 0:
            return nll_sum, nll_sum, int(keep.sum())
        smooth_sum = (-lprobs.sum(-1)).masked_select(keep).sum()
        eps_i = smoothing / (lprobs.size(-1) - 1)
        return (1.0 - smoothing - eps_i) * nll_sum + eps_i * smooth_sum, nll_sum, int(keep.sum())

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """``(label-smoothed cross-entropy per target token, target tokens)`` of the batch."""
        logits = model(**batch["net_input"])
        loss_sum, _, tokens = self.token_losses(logits, batch["target"], self.config.training.label_smoothing)
        return loss_sum / max(tokens, 1), tokens

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
        """``loss`` (nats per target token), ``ppl``, ``bleu`` (lowercased), ``bleu_cased`` and ``chrf`` over the
        evaluated sentences (the first ``max_batches`` batches when given)."""
        from .translation_search import beam_search

        nll_sum, tokens, hypotheses, ids = 0.0, 0, [], []
        options = self.options
        for batch in self.eval_batches(model, loader, device, max_batches):
            net_input = batch["net_input"]
            _, nll, count = self.token_losses(model(**net_input), batch["target"], 0.0)
            nll_sum, tokens = nll_sum + float(nll), tokens + count
            hypotheses += beam_search(model, net_input["src_tokens"], net_input["src_lengths"], beam=options.beam,
                                      max_len_a=options.max_len_a, max_len_b=options.max_len_b,
                                      len_penalty=options.lenpen, eos=self.eos, pad=self.pad)
            ids += batch["id"].tolist()
        loss = nll_sum / max(tokens, 1)
        texts = [self.detokenize(tokens_) for tokens_ in hypotheses]
        scores = corpus_scores(texts, [self.references[i] for i in ids])
        return {**scores.metrics(), "loss": loss, "ppl": math.exp(min(loss, 700.0))}

    def detokenize(self, tokens: list[int]) -> str:
        """Plain text of target token ids (no eos/pad)."""
        return detokenize(self.tgt_dict.string(torch.tensor(tokens, dtype=torch.long)), self.bpe,
                          self.data.tgt_lang or "de")

    def translate(self, model: nn.Module, sentences: list[list[int]], device: torch.device) -> list[str]:
        """Plain-text translations of source token-id sentences (each ending in eos), in order."""
        from ..data.translation import collate
        from .translation_search import beam_search

        samples = [{"id": i, "source": torch.tensor(s), "target": torch.tensor([self.eos])}
                   for i, s in enumerate(sentences)]
        batch = self.to_device(collate(samples, pad_idx=self.pad, eos_idx=self.eos), device)
        net = batch["net_input"]
        options = self.options
        out = beam_search(model, net["src_tokens"], net["src_lengths"], beam=options.beam, max_len_a=options.max_len_a,
                          max_len_b=options.max_len_b, len_penalty=options.lenpen, eos=self.eos, pad=self.pad)
        return [self.detokenize(tokens) for tokens in out]

    @classmethod
    def primary(cls) -> dict[str, Any]:
        """With sacreBLEU's signatures of ``bleu`` and ``chrf`` (``summary.json`` records them with the run)."""
        scores = corpus_scores(["a b c d"], ["a b c d"])
        return {**super().primary(), "bleu_signature": scores.bleu_signature, "chrf_signature": scores.chrf_signature}

    def _references(self) -> list[str]:
        """Plain reference of every evaluation sentence, in corpus order."""
        given = self.data_options.references
        if given is not None:
            lines = Path(given).read_text(encoding="utf-8").splitlines()
            if len(lines) != len(self.eval_set):
                raise UserError(f"task.dataset.options.references={given!r} has {len(lines)} lines, but the "
                                f"{self.options.eval_split} split has {len(self.eval_set)} sentences; valid: one "
                                "reference per sentence")
            return lines
        raw = (getattr(self.data, "raw_refs", None) or {}).get(self.options.eval_split)
        if raw is not None:
            return list(raw)
        return [self.detokenize(self.eval_set[i]["target"][:-1].tolist()) for i in range(len(self.eval_set))]

    # ---- checkpoints -----------------------------------------------------------------------------
    def read_weights(self, path: str | Path) -> dict[str, torch.Tensor] | None:
        """fairseq's and the GaP fork's checkpoints (``{'args' or 'cfg', 'model', 'extra_state', ...}``) with their
        names mapped (a dictionary they carry must be the data's); None for anything else (our state dicts
        and exports), which the runner reads."""
        from ..interop.fairseq_checkpoints import read_checkpoint
        from ..safe_pickle import safe_torch_load

        if Path(path).suffix == ".safetensors":
            return None
        payload = safe_torch_load(path)
        if not (isinstance(payload, dict) and isinstance(payload.get("model"), dict)
                and {"args", "cfg", "extra_state"} & set(payload)):
            return None  # a plain state dict (ours): the runner's reader
        checkpoint = read_checkpoint(path)
        stored, source = checkpoint.tgt_dict, "its extra_state"
        if stored is None and self.data_options.dictionary is not None:  # e.g. a P-GaP combine checkpoint
            from ..data.translation import Dictionary

            stored, source = Dictionary.load(self.data_options.dictionary).symbols, self.data_options.dictionary
        if stored is not None and list(stored) != list(self.tgt_dict.symbols):
            raise UserError(f"checkpoint {str(path)!r} was trained with another target dictionary ({len(stored)} "
                            f"symbols, from {source}) than the data's ({len(self.tgt_dict)}); valid: the data the "
                            "checkpoint was trained on")
        return checkpoint.state


def _one_token_pair(token: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([token]), torch.tensor(1), torch.tensor([token])


def read_data(name: str, options: TranslationDataOptions) -> Any:
    """The ``TranslationData`` of dataset ``name`` (see the module docstring)."""
    from ..data import translation as data

    if name == "embedded_en_de":
        return data.embedded_translation(embedded_cache_dir(options.cache), n_train=options.n_train,
                                         n_valid=options.n_valid, n_test=options.n_test, vocab_size=options.vocab_size)
    if options.path is None:
        raise UserError(f"task.dataset.name={name!r} reads a directory: set task.dataset.options.path")
    if not Path(options.path).is_dir():
        raise UserError(f"task.dataset.options.path={options.path!r} is not a directory")
    if name == "fairseq":
        return data.read_fairseq_binarized(options.path, options.src_lang, options.tgt_lang)
    if options.src_lang is None or options.tgt_lang is None:
        raise UserError(f"task.dataset.name={name!r}: set task.dataset.options.src_lang and tgt_lang (e.g. en, de)")
    if name == "bpe_text":
        return data.read_bpe_text(options.path, options.src_lang, options.tgt_lang, dict_path=options.dictionary)
    if options.spm_model is None:
        raise UserError("task.dataset.name='raw_text' needs task.dataset.options.spm_model (a sentencepiece model)")
    return data.read_raw_text(options.path, options.src_lang, options.tgt_lang, options.spm_model)

