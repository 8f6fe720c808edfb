"""The translation task end to end on the embedded En→De corpus with a tiny Transformer: run, eval, resume
mid-GaP-step, 2 gloo processes against one, the loss and BLEU against independent computations, and the
paper's targets and partitions on the big model."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.errors import UserError
from sparsetrain.runner.setup import config_targets
from sparsetrain.runner.train import run
from sparsetrain.sparsity.partitions import ownership, partition_targets
from sparsetrain.tasks import build_task, get_task
from sparsetrain.tasks.translation_bleu import corpus_scores, detokenize
from conftest import assert_sigterm_resume_equals, torchrun, write_config

PAPER = Path(__file__).parents[1] / "src" / "sparsetrain" / "configs" / "paper"
MATRICES = ['(?:^|\\.)(?:self_attn|encoder_attn)\\.(?:q_proj|k_proj|v_proj|out_proj)\\.weight$',
            '(?:^|\\.)fc[12]\\.weight$']


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def _config(tmp_path: Path, cache: Path, name: str, stages: list, merge: dict | None = None) -> Path:
    config = {
        "name": name, "output_dir": str(tmp_path / name), "seed": 1, "threads": 1,
        "task": {"kind": "translation",
                 "dataset": {"name": "embedded_en_de",
                             "options": {"cache": str(cache), "n_train": 240, "n_valid": 10, "n_test": 24,
                                         "vocab_size": 120}},
                 "model": {"name": "transformer_tiny"},
                 "options": {"max_tokens": 256, "beam": 2, "max_len_b": 12}},
        "targets": {"include": MATRICES},
        "optimizer": {"name": "adam", "lr": 0.003, "betas": [0.9, 0.997], "eps": 1e-9},
        "lr_schedule": {"kind": "inverse_sqrt", "warmup": 10},
        "training": {"label_smoothing": 0.1, "progress": False},
        "stages": stages,
    }
    return write_config(tmp_path, name, config, merge)


SGAP = [{"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "transformer_2"}, "epochs_per_step": 1,
         "rounds": 1, "finetune_epochs": 1}]


def test_a_run_trains_evaluates_bleu_and_eval_reads_it_back(tmp_path, cache, capsys):
    stages = [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "uniform", "sparsity": 0.75},
              {"kind": "finetune", "epochs": 1}]
    result = run(load_config(_config(tmp_path, cache, "tiny", stages)), log=lambda line: None)
    final = result.final
    for key in ("test/bleu", "test/bleu_cased", "test/chrf", "test/loss", "test/ppl"):
        assert isinstance(final[key], float), key
    assert 0 <= final["test/bleu"] <= 100 and final["test/ppl"] == pytest.approx(torch.tensor(final["test/loss"]).exp().item())
    for target, mask in zip(result.masks.targets, result.masks.masks):  # exactly 75% of every matrix pruned
        assert int((target.param == 0).sum()) == int((~mask).sum()) == round(0.75 * target.numel)
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["primary"]["key"] == "test/bleu" and summary["primary"]["mode"] == "max"
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "tiny" / "model_final.pt"), "--config", str(tmp_path / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"BLEU {final['test/bleu']:.4f}" in out and "sparsity 0.7500 (targets)" in out


def _as_gap_fork(state: dict) -> dict:
    """``state`` in the GaP fork's layout (gap-method.md section 4): attention without biases, q/k/v as
    ``in_proj_weight_q|k|v`` used as ``x @ W`` (our weight transposed), encoder norms ``maybe_ln1|2.ln``,
    decoder norms ``*_layer_norm.ln``, and ``decoder.embed_out`` (the shared embedding)."""
    fork = {}
    for key, value in state.items():
        if re.search(r"_attn\.(q|k|v|out)_proj\.bias$", key):
            continue
        match = re.match(r"(.*_attn)\.([qkv])_proj\.weight$", key)
        if match:
            fork[f"{match[1]}.in_proj_weight_{match[2]}"] = value.t().contiguous()
            continue
        key = re.sub(r"^(encoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.maybe_ln1.ln.", key)
        key = re.sub(r"^(encoder\.layers\.\d+)\.final_layer_norm\.", r"\1.maybe_ln2.ln.", key)
        key = re.sub(r"^(decoder\.layers\.\d+\.\w+_layer_norm)\.", r"\1.ln.", key)
        fork[key] = value
    fork["decoder.embed_out"] = state["decoder.embed_tokens.weight"]
    return fork


def test_a_gap_fork_checkpoint_evaluates_like_the_model_it_holds(tmp_path, cache, capsys):
    """A P-GaP combine checkpoint of the GaP fork ({'args','model','extra_state'} with no dictionaries, the
    fork's key names and layouts) is read through the safe loader, with --dict supplying the dictionary, and
    scores exactly what the same weights score as a plain state dict; a wrong dictionary is refused."""
    config_path = _config(tmp_path, cache, "fork", [{"kind": "dense", "epochs": 1}])
    ours = run(load_config(config_path), log=lambda line: None)
    state = {k: torch.zeros_like(v) if re.search(r"_attn\.(q|k|v|out)_proj\.bias$", k) else v
             for k, v in ours.model.state_dict().items()}  # the fork's attention has no biases
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"args": argparse.Namespace(arch="transformer_tiny"), "model": _as_gap_fork(state),
                "extra_state": {}, "optimizer_history": [{"num_updates": 3}]}, tmp_path / "combine.pt")
    dictionary = tmp_path / "dict.txt"
    task = build_task(load_config(config_path))
    task.tgt_dict.save(dictionary)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "plain.pt"), "--config", str(config_path)]) == 0
    plain = capsys.readouterr().out.splitlines()[-1]
    assert main(["eval", str(tmp_path / "combine.pt"), "--config", str(config_path), "--dict", str(dictionary)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == plain and "BLEU" in plain
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("".join(f"w{i} 1\n" for i in range(len(task.tgt_dict) - 4)))
    assert main(["eval", str(tmp_path / "combine.pt"), "--config", str(config_path), "--dict", str(wrong)]) == 2
    assert "was trained with another target dictionary" in capsys.readouterr().err


def test_resume_in_the_middle_of_a_gap_step_is_bit_identical(tmp_path, cache, monkeypatch):
    extra = {"merge": {"training": {"progress": False, "checkpoint_every_steps": 3, "eval_every": 9}}}
    whole = run(load_config(_config(tmp_path, cache, "whole", SGAP, **extra)), log=lambda line: None)
    spe = build_task(load_config(_config(tmp_path, cache, "probe", SGAP))).steps_per_epoch()
    stopped = load_config(_config(tmp_path, cache, "stopped", SGAP, **extra))
    # stopped in the second GaP step (the decoder grown), mid-epoch
    resumed = assert_sigterm_resume_equals(whole, stopped, get_task("translation"), spe + 4, monkeypatch)
    assert resumed.final["test/bleu"] == whole.final["test/bleu"]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_update_freq_four(tmp_path, cache):
    """fairseq's equivalence: 2 ranks accumulating 2 token batches each (DDP syncing only the last) = 1
    process accumulating 4 (update_freq counts a step's batches over all processes: both use 4)."""
    stages = [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
              {"kind": "finetune", "epochs": 1}]
    extra = {"merge": {"training": {"progress": False, "update_freq": 4}}}
    single = run(load_config(_config(tmp_path, cache, "single", stages, **extra)), log=lambda line: None)
    multi = _config(tmp_path, cache, "multi", stages, **extra)
    out = torchrun(multi)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data parallel over 2 processes" in out.stdout
    theirs = torch.load(tmp_path / "multi" / "model_final.pt", weights_only=True)
    for key, value in single.model.state_dict().items():
        assert torch.equal(theirs[key] == 0, value == 0), key  # the same masks
        if key.endswith("k_proj.bias"):
            # The true gradient of a key bias is exactly zero (softmax is shift-invariant), so what it gets is
            # rounding noise, which Adam scales to full-size steps: summation order decides it, not the data.
            continue
        torch.testing.assert_close(theirs[key], value, rtol=1e-4, atol=1e-5)  # float reduction order only


def test_update_freq_accumulates_the_same_gradient_as_one_big_batch(tmp_path, cache):
    """One step of 2 accumulated token batches = the gradient of the token-weighted mean over both."""
    config = load_config(_config(tmp_path, cache, "acc", [{"kind": "dense", "epochs": 1}],
                                 merge={"training": {"update_freq": 2}}))
    task = build_task(config)
    torch.manual_seed(0)
    model = task.build_model()
    (micro,), tokens = (step[:1] for step in task.step_micro_batches(0))
    assert len(micro) == 2 and tokens[0] == sum(int(task.train_set.tgt_sizes[b].sum()) for b in micro)
    batches = [task.collate_fn([task.train_set[i] for i in b]) for b in micro]
    model.zero_grad()
    for batch in batches:
        loss, count = task.loss(model, batch)
        (loss * count / tokens[0]).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    joint = task.collate_fn([task.train_set[i] for b in micro for i in b])
    task.loss(model, joint)[0].backward()
    for a, b in zip(accumulated, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_label_smoothed_loss_matches_fairseqs_formula(tmp_path, cache):
    config = load_config(_config(tmp_path, cache, "ls", [{"kind": "dense", "epochs": 1}]))
    task = build_task(config)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    target = torch.tensor([[4, 5, task.pad], [6, 7, 8]])
    smoothed, nll, count = task.token_losses(logits, target, 0.1)
    lprobs = logits.log_softmax(-1)
    expected_nll, expected = 0.0, 0.0
    for b in range(2):
        for t in range(3):
            if target[b, t] == task.pad:
                continue
            n = -lprobs[b, t, target[b, t]]
            eps_i = 0.1 / (11 - 1)
            expected_nll += n
            expected += (1 - 0.1 - eps_i) * n + eps_i * (-lprobs[b, t].sum())
    assert count == 5
    torch.testing.assert_close(nll, torch.as_tensor(expected_nll))
    torch.testing.assert_close(smoothed, torch.as_tensor(expected))


def test_bleu_is_sacrebleus_on_the_same_strings():
    import sacrebleu

    hyps = ["Er fliegt am dritten Mai nach Rom .", "Das kostet zwölf Euro", "Ich habe Norwegen besucht."]
    refs = ["Er fliegt am dritten Mai nach Rom.", "Das Abendessen kostet zwölf Euro.", "ich habe Norwegen besucht."]
    scores = corpus_scores(hyps, refs)
    assert scores.bleu == sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score
    assert scores.bleu_cased == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert scores.chrf == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert scores.bleu > scores.bleu_cased and "case:lc" in scores.bleu_signature
    assert detokenize("▁Er ▁flieg t ▁nach ▁Rom .", "sentencepiece", "de") == "Er fliegt nach Rom."
    assert detokenize("Er flieg@@ t nach Rom .", "subword_nmt", "de") == "Er fliegt nach Rom."


def test_paper_targets_are_the_96_matrices_and_the_presets_split_them_as_the_reference():
    """176,160,768 weights in 96 matrices; kappa 2/3/3-forward/6 partition sizes of gap-method.md section 1.5."""
    config = load_config(PAPER / "gap_transformer_wmt14_sgap_k3_0.9.yaml", check_files=False)
    facts = get_task("translation").plan_facts(config)
    model = facts[1]
    targets, kept = config_targets(model, config)
    assert len(targets) == 96 and sum(t.numel for t in targets) == 176_160_768 and not kept
    assert not any("embed" in t.name or "norm" in t.name for t in targets)
    sizes = {scheme: [p.numel for p in partition_targets(targets, scheme)]
             for scheme in ("transformer_2", "transformer_3", "transformer_3_forward", "transformer_6")}
    assert sizes["transformer_2"] == [75_497_472, 100_663_296]
    assert sizes["transformer_3"] == [50_331_648, 58_720_256, 67_108_864]
    assert sizes["transformer_3_forward"] == [75_497_472, 50_331_648, 50_331_648]
    assert sizes["transformer_6"] == [25_165_824] * 3 + [33_554_432] * 3


def test_pgap_merge_ownership_on_the_transformer():
    """Each layer's norms and biases merge from the worker that grew the layer; the final norms and the
    shared embedding are orphans, taken from worker 1 (gap-method.md section 6 item 8, best reading)."""
    from sparsetrain.models.transformer import build_transformer
    from sparsetrain.runner.components import parse_selectors
    from sparsetrain.sparsity import select_targets

    model = build_transformer("transformer_small", vocab_size=64)
    targets = select_targets(model, parse_selectors(MATRICES), None)
    owners = ownership(model.state_dict().keys(), partition_targets(targets, "transformer_2"), model=model)
    for key, owner in owners.items():
        if key.startswith(("encoder.layers.", "decoder.layers.")):
            assert owner == (0 if key.startswith("encoder.") else 1), key
        else:
            assert owner is None, key  # embed_tokens, encoder.layer_norm, decoder.layer_norm
    assert {"encoder.layer_norm.weight", "decoder.layer_norm.bias", "encoder.embed_tokens.weight"} <= set(owners)


def test_bad_translation_options_are_one_line_errors(tmp_path, cache):
    stages = [{"kind": "dense", "epochs": 1}]
    bad = {"merge": {"task": {"options": {"max_tokens": 0}}}}
    with pytest.raises(UserError, match=r"^task.options.max_tokens=0: "):
        get_task("translation").check_config(load_config(_config(tmp_path, cache, "bad", stages, **bad)))
    bad = {"merge": {"task": {"options": {"beams": 4}}}}
    with pytest.raises(UserError, match=r"unknown key task.options.'beams'; valid: max_tokens"):
        get_task("translation").check_config(load_config(_config(tmp_path, cache, "bad2", stages, **bad)))
    bad = {"merge": {"task": {"options": {"max_tokens": 8}}}}
    with pytest.raises(UserError, match=r"more than max_tokens=8"):
        run(load_config(_config(tmp_path, cache, "bad3", stages, **bad)), log=lambda line: None)


def _bpe_corpus(root: Path, pairs: list[tuple[str, str]]) -> None:
    """BPE'd (subword-nmt ``@@``) parallel text, every split the same small corpus."""
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"{split}.en").write_text("".join(f"{en}\n" for en, _ in pairs))
        (root / f"{split}.de").write_text("".join(f"{de}\n" for _, de in pairs))


PAIRS = [("the hou@@ se is red .", "das Hau@@ s ist rot ."), ("I see three birds .", "ich sehe drei Vö@@ gel ."),
         ("she flies to Rome .", "sie fliegt nach Rom ."), ("we have four cars .", "wir haben vier Autos .")] * 6


def test_a_fairseq_binarized_directory_trains_and_scores_against_its_raw_references(tmp_path, cache):
    """The fairseq-preprocess layout (legacy TNTIDX, as the GaP fork writes it, joined dictionary): BPE joins
    removed and Moses-detokenized before sacreBLEU against test.raw.de."""
    from sparsetrain.data.translation import Dictionary, write_indexed

    data = tmp_path / "wmt_bin"
    data.mkdir()
    dictionary = Dictionary.build([line.split() for pair in PAIRS for line in pair])
    for lang in ("en", "de"):
        dictionary.save(data / f"dict.{lang}.txt")
    for split in ("train", "valid", "test"):
        for index, lang in enumerate(("en", "de")):
            write_indexed(data / f"{split}.en-de.{lang}", [dictionary.encode_line(p[index]) for p in PAIRS],
                          format="legacy")
    (data / "test.raw.de").write_text("".join(f"{de.replace('@@ ', '')}\n" for _, de in PAIRS).replace(" .", "."))
    stages = [{"kind": "dense", "epochs": 2}]
    merge = {"task": {"kind": "translation", "dataset": {"name": "fairseq", "options": {"path": str(data)}},
                      "model": {"name": "transformer_tiny"}, "options": {"max_tokens": 64, "max_len_b": 8}}}
    config = load_config(_config(tmp_path, cache, "bin", stages, merge=merge))
    task = build_task(config)
    assert task.references[1] == "ich sehe drei Vögel." and task.detokenize(
        task.eval_set[1]["target"][:-1].tolist()) == "ich sehe drei Vögel."
    result = run(config, log=lambda line: None)
    assert 0 <= result.final["test/bleu"] <= 100 and result.final["test/loss"] > 0


def test_separate_dictionaries_need_unshared_embeddings(tmp_path, cache):
    from sparsetrain.data.translation import Dictionary

    data = tmp_path / "bpe"
    _bpe_corpus(data, PAIRS)
    for index, lang in enumerate(("en", "de")):
        Dictionary.build([p[index].split() for p in PAIRS], padding_factor=1).save(data / f"dict.{lang}.txt")
    task_section = {"kind": "translation", "dataset": {"name": "bpe_text", "options": {
        "path": str(data), "src_lang": "en", "tgt_lang": "de"}}, "model": {"name": "transformer_tiny"},
        "options": {"max_tokens": 64, "max_len_b": 8}}
    task = build_task(load_config(_config(tmp_path, cache, "sep", [{"kind": "dense", "epochs": 1}],
                                          merge={"task": task_section})))
    assert not task.data.joined and len(task.src_dict) != len(task.tgt_dict)
    with pytest.raises(UserError, match="shares its source and target embeddings, but the data has separate"):
        task.build_model()
    task_section["model"] = {"name": "transformer_tiny", "options": {"share_all_embeddings": False}}
    config = load_config(_config(tmp_path, cache, "sep2", [{"kind": "dense", "epochs": 1}], merge={"task": task_section}))
    result = run(config, log=lambda line: None)
    assert result.model.encoder.embed_tokens.weight.shape[0] == len(task.src_dict)
    assert result.model.decoder.embed_tokens.weight.shape[0] == len(task.tgt_dict)


def test_every_translation_demo_config_plans_ten_epochs(tmp_path, monkeypatch, capsys):
    """The demo table's rows have the same epoch budget and targets (the embedded corpus is written under
    $SPARSETRAIN_CACHE, here a temporary directory)."""
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path))
    demo = Path(__file__).parents[1] / "src" / "sparsetrain" / "configs" / "demo_translation"
    configs = sorted(demo.glob("*.yaml"))
    assert [p.stem for p in configs] == ["00_dense", "10_gp_0.8", "11_sgap_uniform_0.8", "12_pgap_uniform_0.8",
                                         "20_gp_0.9", "21_sgap_uniform_0.9", "22_pgap_uniform_0.9"]
    for path in configs:
        assert main(["plan", str(path)]) == 0
        out = capsys.readouterr().out
        assert ": 10 epochs," in out.splitlines()[0], out.splitlines()[0]
        assert load_config(path).targets.include == MATRICES
