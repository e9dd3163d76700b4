"""Hugging Face causal LMs from a local folder (issue 8): a tiny GPT-2 (Conv1D, tied LM head, BPE
tokenizer) and a tiny Llama (Linear projections, untied LM head, word-level tokenizer), built and
saved here; sites, compression bytes, export round trip, search, train and eval on them."""

from __future__ import annotations

import json
import math

import pytest
import torch

import autoshrink
from autoshrink.cli import main
from autoshrink.data import SubwordVocab, load_lm_data
from autoshrink.final.export import export_tensors, file_bytes, save_compressed
from autoshrink.methods import (
    CompressedEmbedding,
    CompressedLinear,
    safetensors_file_bytes,
    safetensors_header_bytes,
    specs_of,
)
from autoshrink.models import discover_sites
from autoshrink.plan import ModelFile, parse_plan, plan_stored_bytes, stored_bytes
from autoshrink.plan.bytes import FILE_METADATA
from conftest import _SENTENCES, search_argv

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]", "<eos>"])
    else:
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<eos>"])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


def _save(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tokenizer("bpe")
    torch.manual_seed(0)
    eos = tok.eos_token_id
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos
        )
    )
    return _save(tmp_path_factory.mktemp("hf") / "gpt2", model, tok)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer("wordlevel")
    torch.manual_seed(0)
    eos = tok.eos_token_id
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            bos_token_id=eos,
            eos_token_id=eos,
        )
    )
    return _save(tmp_path_factory.mktemp("hf") / "llama", model, tok)


def _unique_params(model):
    return {id(p): p for p in model.parameters()}.values()


def test_gpt2_sites_conv1d_transposed_and_tied_head_counted_once(gpt2_dir):
    model = autoshrink.load(str(gpt2_dir))
    sites = {s.name: s for s in autoshrink.sites(model)}
    v = len(model.vocab)
    assert sites["transformer.wte"].role == "embedding" and sites["transformer.wte"].shape == (v, 32)
    assert sites["lm_head"].role == "softmax" and sites["lm_head"].tied_with == "transformer.wte"
    assert "transformer.wpe" not in sites  # position table: stays dense
    # Conv1D stores its weight in x out; a site's shape is (out, in) as y = W x.
    c_attn = model.get_submodule("transformer.h.0.attn.c_attn")
    assert tuple(c_attn.weight.shape) == (32, 96) and sites["transformer.h.0.attn.c_attn"].shape == (96, 32)
    assert sites["transformer.h.0.mlp.c_fc"].shape == (128, 32) and sites["transformer.h.0.mlp.c_proj"].shape == (
        32,
        128,
    )
    assert {s.role for n, s in sites.items() if ".attn." in n} == {"attention"}
    assert {s.role for n, s in sites.items() if ".mlp." in n} == {"mlp"}
    # Tied weights count once: stored bytes are the unique parameters', the shared table once.
    unique = 4 * sum(p.numel() for p in _unique_params(model))
    every = 4 * sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    header = safetensors_header_bytes(specs_of(export_tensors(model)), FILE_METADATA)  # the file's, counted too
    assert stored_bytes(model) - header == unique == every - 4 * v * 32
    site_params = {id(model.get_submodule(s.name).weight) for s in sites.values()}
    site_params |= {id(model.get_submodule(s.name).bias) for s in sites.values() if s.bias}
    rest = 4 * sum(p.numel() for p in _unique_params(model) if id(p) not in site_params)
    assert unique == sum(s.dense_bytes for s in sites.values() if s.tied_with is None) + rest


def test_llama_sites_and_cli(llama_dir, capsys):
    model = autoshrink.load(str(llama_dir))
    sites = {s.name: s for s in autoshrink.sites(model)}
    layer = "model.layers.1"
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert sites[f"{layer}.self_attn.{proj}"].role == "attention"
    assert sites[f"{layer}.mlp.gate_proj"].shape == (64, 32) and sites[f"{layer}.mlp.down_proj"].shape == (32, 64)
    assert {sites[f"{layer}.mlp.{p}"].role for p in ("gate_proj", "up_proj", "down_proj")} == {"mlp"}
    assert sites["lm_head"].role == "softmax" and sites["lm_head"].tied_with is None  # untied
    assert sites["model.embed_tokens"].role == "embedding"
    assert len(sites) == 2 + 2 * 7
    assert main(["sites", "--model", str(llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in out and "attention" in out and "lm_head" in out


def test_tokenized_corpus_keeps_tokenizer_ids_and_counts_them(gpt2_dir, text_file):
    model = autoshrink.load(str(gpt2_dir))
    lm = load_lm_data(str(text_file), vocab=model.vocab)
    tok = model.vocab.tokenizer
    first = text_file.read_text().splitlines()[0]
    expected = tok(first, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert lm.train[: len(expected)].tolist() == expected
    assert isinstance(lm.vocab, SubwordVocab) and lm.vocab.freqs.shape == (len(model.vocab),)
    assert lm.vocab.freqs.sum().item() == lm.train.numel()
    assert lm.vocab.freqs[tok.eos_token_id].item() == int(
        600 * 0.9
    )  # one per train line (conftest: 600 lines, 90% train)
    again = load_lm_data(str(text_file), vocab=model.vocab)  # from the tokenisation cache
    assert torch.equal(again.train, lm.train) and torch.equal(again.test, lm.test)


GPT2_PLAN = {
    "lm_head": {"method": "groupreduce", "blocks": 2, "rank": 4, "bits": 8},  # the tied pair, once
    "transformer.h.0.attn.c_attn": {"method": "lowrank", "rank": 4, "bits": 8},
    "transformer.h.0.mlp.c_fc": {"method": "kronecker", "density": 0.05},
    "transformer.h.1.mlp.c_proj": {"method": "prune", "density": 0.2, "bits": 8},
    "transformer.h.1.attn.c_proj": {"method": "quant", "bits": 4},
}
LLAMA_PLAN = {
    "model.embed_tokens": {"method": "hash", "chunks": 2, "pool": 32, "bits": 8},
    "lm_head": {"method": "lightrnn", "bits": 8},
    "model.layers.0.self_attn.q_proj": {"method": "tt", "cores": 2, "rank": 3},
    "model.layers.1.mlp.down_proj": {"method": "lowrank", "rank": 3, "bits": 6},
}


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_compress_bytes_analytic_equal_built_and_export_round_trip(which, gpt2_dir, llama_dir, text_file, tmp_path):
    folder, plan = (gpt2_dir, GPT2_PLAN) if which == "gpt2" else (llama_dir, LLAMA_PLAN)
    dense = autoshrink.load(str(folder))
    freqs = load_lm_data(str(text_file), vocab=dense.vocab).vocab.freqs
    sites = discover_sites(dense)
    analytic = plan_stored_bytes(sites, parse_plan(plan), freqs, model_file=ModelFile.of(dense))
    torch.manual_seed(0)
    small = autoshrink.compress(dense, plan, freqs=freqs).eval()
    assert stored_bytes(small) == analytic < stored_bytes(dense)
    if which == "gpt2":  # tied: one compressed weight serves the embedding and the head
        wte, head = small.get_submodule("transformer.wte"), small.get_submodule("lm_head")
        assert isinstance(wte, CompressedEmbedding) and isinstance(head, CompressedLinear)
        assert wte.compressed is head.compressed and small.hf.lm_head is head  # the HF forward uses it
    out = save_compressed(small, plan, tmp_path / "out", dense.meta, {"note": "test"}, sites=sites)
    assert file_bytes(out) == safetensors_file_bytes(export_tensors(small), FILE_METADATA) == analytic
    loaded = autoshrink.load(str(out))
    assert stored_bytes(loaded) == analytic
    listed = {s.name: s for s in autoshrink.sites(loaded)}  # compressed sites are listed, with method and bytes
    for name, cfg in plan.items():
        assert listed[name].method == cfg["method"] and listed[name].stored_bytes > 0, name
    assert set(listed) == {s.name for s in sites}
    if which == "gpt2":
        assert listed["lm_head"].tied_with == "transformer.wte" and listed["transformer.wte"].tied_with is None
    assert sum(s.stored_bytes for s in listed.values() if s.method and not s.tied_with) <= analytic
    assert [s["name"] for s in json.loads((out / "model.json").read_text())["sites"]] == [s.name for s in sites]
    ids = torch.randint(len(dense.vocab), (40, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, state = small(ids)
        assert logits.shape == (40, 3, len(dense.vocab)) and state is None
        torch.testing.assert_close(loaded(ids)[0], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_search_train_eval(which, gpt2_dir, llama_dir, text_file, tmp_path, capsys):
    folder = gpt2_dir if which == "gpt2" else llama_dir
    run = tmp_path / "run"
    assert (
        main(
            search_argv(folder, text_file, run, budget="3x", trials=2, finetune_steps=4, device="cpu", sampler="random")
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "transformer.yaml" in err  # the transformer space, picked and said
    for name in ("study.db", "run.json", "trials.csv", "front.csv"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["space"].endswith("transformer.yaml") and info["model"] == str(folder.resolve())
    trials = (run / "trials.csv").read_text().splitlines()
    assert len(trials) == 3 and "COMPLETE" in trials[1] + trials[2]
    assert main(["train", str(run), "--trial", "best", "--steps", "4"]) == 0
    final = run / "final"
    for name in ("model.safetensors", "plan.json", "model.json", "metrics.json", "base/config.json"):
        assert (final / name).is_file(), name
    capsys.readouterr()
    assert main(["eval", str(final), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((final / "metrics.json").read_text())
    assert math.isfinite(result["test_ppl"]) and result["test_ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-4)
    assert result["stored_bytes"] == metrics["stored_bytes"] == file_bytes(final)
    assert result["ratio"] >= 3.0
    assert main(["eval", str(folder), "--data", str(text_file), "--json"]) == 0  # the dense folder too
    dense = json.loads(capsys.readouterr().out)
    assert 0.9 < dense["ratio"] < 1.0 and math.isfinite(dense["test_ppl"])  # its export's header: a little over fp32


def test_bad_folders_are_one_line_exit_2(gpt2_dir, tmp_path, capsys):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gpt2_dir / name, no_tok / name)
    from transformers import ViTConfig

    vit = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(vit)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-model"}')
    for folder, words in (
        (empty, "neither"),
        (no_tok, "no tokenizer"),
        (vit, "not a causal language model"),
        (broken, "config"),
    ):
        assert main(["sites", "--model", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
