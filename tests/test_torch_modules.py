"""A user's own LM built on standard torch modules (nn.LSTM / nn.GRU / nn.TransformerEncoder):
sites named after the module's parameters, compression in place (the module keeps its own
kernel), the forward conventions read by adapt(), search, exact bytes, export and load."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoshrink
from autoshrink import SearchConfig, TrainConfig, UserError
from autoshrink.api import search
from autoshrink.search.study import REPAIRED
from autoshrink.data import load_lm_data
from autoshrink.final.export import file_bytes, save_compressed
from autoshrink.measure.latency import LatencyTable
from autoshrink.models.adapter import TorchLM, adapt
from autoshrink.models.discover import recurrent_weight_names
from autoshrink.models.site_inputs import attention_inputs, recurrent_inputs
from autoshrink.plan import ModelFile, compress, dense_bytes, plan_stored_bytes, stored_bytes


class RNNModel(nn.Module):
    """As in pytorch/examples word_language_model: forward(input (T, B), hidden) with a required
    hidden state and init_hidden(batch) -> (log-probabilities flattened to (T*B, V), hidden)."""

    def __init__(
        self,
        rnn_type: str,
        ntoken: int,
        ninp: int = 16,
        nhid: int = 16,
        nlayers: int = 2,
        tie: bool = False,
        proj: int = 0,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        extra = {"proj_size": proj} if proj else {}
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, bidirectional=bidirectional, **extra)
        self.decoder = nn.Linear((proj or nhid) * (2 if bidirectional else 1), ntoken)
        if tie:
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers, self.proj = rnn_type, nhid, nlayers, proj
        self.directions = 2 if bidirectional else 1

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        decoded = self.decoder(output).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        layers = self.nlayers * self.directions
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(layers, bsz, self.proj or self.nhid), weight.new_zeros(layers, bsz, self.nhid))
        return weight.new_zeros(layers, bsz, self.nhid)


class TransformerLM(nn.Module):
    """forward(ids (B, T)) -> logits (B, T, V): nn.TransformerEncoder with a causal mask."""

    def __init__(self, ntoken: int, d: int = 16, heads: int = 2, layers: int = 2, causal: bool = True):
        super().__init__()
        self.emb = nn.Embedding(ntoken, d)
        self.pos = nn.Parameter(torch.randn(64, d) * 0.02)  # a plain parameter: stays dense, not a site
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, ntoken)
        self.causal = causal

    def forward(self, ids):
        steps = ids.size(1)
        x = self.emb(ids) + self.pos[:steps]
        mask = nn.Transformer.generate_square_subsequent_mask(steps) if self.causal else None
        return self.head(self.encoder(x, mask=mask, is_causal=self.causal))


def _lstm_sites(h4: int, n_in: int, h: int, layers: int = 2, proj: int = 0, suffixes=("",)):
    out = []
    for k in range(layers):
        for suffix in suffixes:
            out += [
                (f"rnn.weight_ih_l{k}{suffix}", "recurrent", (h4, n_in if k == 0 else (proj or h) * len(suffixes))),
                (f"rnn.weight_hh_l{k}{suffix}", "recurrent", (h4, proj or h)),
            ]
            if proj:
                out.append((f"rnn.weight_hr_l{k}{suffix}", "recurrent", (proj, h)))
    return out


def _transformer_sites(d: int = 16, layers: int = 2):
    out = []
    for k in range(layers):
        p = f"encoder.layers.{k}"
        out += [
            (f"{p}.self_attn.in_proj_weight", "attention", (3 * d, d)),
            (f"{p}.self_attn.out_proj", "attention", (d, d)),
            (f"{p}.linear1", "mlp", (2 * d, d)),
            (f"{p}.linear2", "mlp", (d, 2 * d)),
        ]
    return out


# name: (factory of the model for a vocabulary size V, expected sites between the vocabulary
# sites, conventions adapt() must find)
FLAT = dict(batch_first=False, output="flat_tb", scores="log_probs", state=True)
CASES = {
    "lstm": (lambda v: RNNModel("LSTM", v), _lstm_sites(64, 16, 16), FLAT),
    "lstm-tied": (lambda v: RNNModel("LSTM", v, tie=True), _lstm_sites(64, 16, 16), FLAT),
    "gru": (lambda v: RNNModel("GRU", v), _lstm_sites(48, 16, 16), FLAT),
    "lstm-proj": (lambda v: RNNModel("LSTM", v, nhid=24, proj=16), _lstm_sites(96, 16, 24, proj=16), FLAT),
    "transformer": (
        lambda v: TransformerLM(v),
        _transformer_sites(),
        dict(batch_first=True, output="btv", scores="logits", state=False),
    ),
}
VOCAB_SITES = {"transformer": ("emb", "head")}

SPACE = """
roles:
  embedding: &vocab
    lowrank: {rank: {low: 2, high: 6}, bits: [8]}
    quant: {bits: [4, 8]}
  softmax: *vocab
  recurrent: &matrix
    lowrank: {rank: {low: 2, high: 6}, bits: [8]}
    quant: {bits: [4, 8]}
  attention: *matrix
  mlp: *matrix
"""


@pytest.fixture(scope="module")
def lm_data(text_file):
    return load_lm_data(str(text_file))


def _model(case: str, vocab_size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CASES[case][0](vocab_size)


@pytest.mark.parametrize("case", list(CASES))
def test_sites_are_named_after_the_modules_own_parameters(case):
    model = _model(case, 40)
    emb, head = VOCAB_SITES.get(case, ("encoder", "decoder"))
    d = 16
    expected = [(emb, "embedding", (40, d))] + CASES[case][1] + [(head, "softmax", (40, d))]
    sites = autoshrink.sites(model)
    assert [(s.name, s.role, s.shape) for s in sites] == expected
    assert [s.tied_with for s in sites if s.name == head] == (["encoder"] if case == "lstm-tied" else [None])
    # The weight of every in-place site is the module's own parameter; its bias stays a plain one.
    params = dict(model.named_parameters())
    for s in sites:
        if s.role in ("recurrent", "attention", "mlp"):
            weight = params.get(s.name, params.get(s.name + ".weight"))
            assert weight is not None and tuple(weight.shape) == s.shape and not s.bias


@pytest.mark.parametrize("case", list(CASES))
def test_adapt_finds_the_forward_conventions_and_reads_time_first_scores(case):
    model = _model(case, 40)
    lm = adapt(model)
    assert lm.conventions.to_dict() == CASES[case][2]
    assert lm.module is model and dict(lm.named_parameters()).keys() == dict(model.named_parameters()).keys()
    ids = torch.randint(40, (7, 3))
    lm.eval()
    scores, state = lm(ids)
    assert scores.shape == (7, 3, 40)
    # The same scores the model gives in its own layout, read as (T, B, V).
    with torch.no_grad():
        if case == "transformer":
            own = model(ids.t()).transpose(0, 1)
        else:
            own = model(ids, model.init_hidden(3))[0].view(7, 3, 40)
    torch.testing.assert_close(scores.detach(), own)
    assert (state is not None) == CASES[case][2]["state"]


@pytest.mark.parametrize("case", list(CASES))
def test_full_rank_compression_in_place_keeps_outputs_kernel_and_gradients(case):
    lm = adapt(_model(case, 40)).eval()
    # full rank at 16 bits: exact up to fp16 rounding, and smaller than the fp32 site (compress refuses more)
    plan = {
        s.name: {"method": "lowrank", "rank": min(s.shape), "bits": 16} for s in autoshrink.sites(lm) if not s.is_vocab
    }
    small = compress(lm, plan)
    ids = torch.randint(40, (9, 2))
    with torch.no_grad():
        torch.testing.assert_close(small(ids)[0], lm(ids)[0], atol=2e-2, rtol=2e-2)
    names = dict(small.named_parameters())
    for site in plan:
        assert site not in names and site + ".weight" not in names  # no dense copy is kept
    inner = small.module.rnn if case != "transformer" else small.module.encoder.layers[0].self_attn
    assert isinstance(inner, nn.LSTM if case.startswith("lstm") else nn.GRU if case == "gru" else nn.MultiheadAttention)
    listed = {s.name: s.method for s in autoshrink.sites(small)}
    assert listed == {s.name: "lowrank" if s.name in plan else None for s in autoshrink.sites(lm)}
    # Training reaches the factors through the module's own kernel; a trained copy deep-copies.
    small.train()
    small(ids)[0].sum().backward()
    grads = [p.grad for n, p in small.named_parameters() if ".compressed." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    twin = copy.deepcopy(small).eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(ids)[0], small(ids)[0])


def test_bytes_of_in_place_sites_are_exact_before_building(lm_data):
    lm = adapt(RNNModel("LSTM", len(lm_data.vocab), proj=8, nhid=12), lm_data.vocab)
    sites = autoshrink.sites(lm)
    plan = {s.name: {"method": "lowrank", "rank": 3, "bits": 6} for s in sites if s.role == "recurrent"}
    plan["decoder"] = {"method": "quant", "bits": 4}
    parsed = autoshrink.plan.parse_plan(plan)
    analytic = plan_stored_bytes(sites, parsed, model_file=ModelFile.of(lm))
    assert analytic == stored_bytes(compress(lm, plan)) < stored_bytes(lm)


@pytest.mark.parametrize("case", list(CASES))
def test_search_compresses_the_modules_and_the_export_loads_into_the_users_class(case, lm_data, text_file, tmp_path):
    factory = CASES[case][0]
    vocab_size = len(lm_data.vocab)
    model = _model(case, vocab_size)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    budget = "1.8x" if case == "transformer" else "2x"  # its 28 small tensors: the file's header is 9% of it
    result = search(
        SearchConfig(
            budget,
            model=model,
            data=str(text_file),
            space=str(space),
            trials=2,
            finetune_steps=3,
            sampler="random",
            run_dir=tmp_path / "run",
        ),
        log=lambda line: None,
    )
    inner = [s.name for s in autoshrink.sites(adapt(model)) if s.role in ("recurrent", "attention", "mlp")]
    trials = [t for t in result.study.get_trials() if not t.user_attrs.get(REPAIRED)]  # a repaired draw: not a trial
    assert len(trials) == 2 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}  # a weak one may stop early
    assert any(t.state.name == "COMPLETE" and t.user_attrs["feasible"] for t in trials)
    for t in trials:
        assert set(inner) <= set(t.user_attrs["plan"])  # the space compresses every recurrent/attention matrix

    final = autoshrink.train(result.run_dir, TrainConfig(model=model, steps=3, evals=1, out=str(tmp_path / "final")))
    out = final.out
    assert file_bytes(out) == stored_bytes(final.model) == final.metrics["stored_bytes"]

    fresh = _model(case, vocab_size, seed=1)
    loaded = autoshrink.load(str(out), model=fresh)
    assert isinstance(loaded, TorchLM) and loaded.module is fresh and stored_bytes(loaded) == file_bytes(out)
    ids = torch.randint(vocab_size, (8, 2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], final.model(ids)[0], atol=1e-5, rtol=1e-5)
    report = autoshrink.evaluate(out, model=lambda: factory(vocab_size))
    assert math.isfinite(report["test_ppl"]) and report["stored_bytes"] == file_bytes(out)
    assert report["ratio"] == pytest.approx(dense_bytes(model) / file_bytes(out))


def test_load_of_an_own_model_export_needs_that_model(lm_data, tiny_model_dir, tmp_path):
    vocab_size = len(lm_data.vocab)
    lm = adapt(RNNModel("GRU", vocab_size), lm_data.vocab)
    plan = {"rnn.weight_hh_l1": {"method": "lowrank", "rank": 2}}
    save_compressed(compress(lm, plan), plan, tmp_path / "x", lm.meta, {}, sites=autoshrink.sites(lm))
    with pytest.raises(UserError, match=r"model=RNNModel|pass your model"):
        autoshrink.load(str(tmp_path / "x"))
    with pytest.raises(UserError, match="does not match the export's sites"):
        autoshrink.load(str(tmp_path / "x"), model=RNNModel("GRU", vocab_size, nhid=8))
    with pytest.raises(UserError, match="without model="):
        autoshrink.load(str(tiny_model_dir), model=RNNModel("GRU", vocab_size))


def test_a_bidirectional_lstm_is_refused_as_an_lm_but_compresses_and_exports_when_declared(tmp_path):
    model = RNNModel("LSTM", 30, nhid=12, proj=8, bidirectional=True)
    with pytest.raises(UserError, match="sees the future"):
        adapt(model)
    lm = adapt(model, **FLAT)  # declared: no probe
    names = [s.name for s in autoshrink.sites(lm) if s.role == "recurrent"]
    assert names == [n for n, _, _ in _lstm_sites(48, 16, 12, proj=8, suffixes=("", "_reverse"))]
    plan = {n: {"method": "lowrank", "rank": 2, "bits": 8} for n in names}
    small = compress(lm, plan)
    save_compressed(small, plan, tmp_path / "bi", lm.meta, {}, sites=autoshrink.sites(lm))
    loaded = autoshrink.load(str(tmp_path / "bi"), model=RNNModel("LSTM", 30, nhid=12, proj=8, bidirectional=True))
    ids = torch.randint(30, (5, 2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], small.eval()(ids)[0])
    assert stored_bytes(loaded) == file_bytes(tmp_path / "bi")


class _Probs(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(20, 8), nn.GRU(8, 8), nn.Linear(8, 20)

    def forward(self, ids):
        return self.out(self.rnn(self.emb(ids))[0]).softmax(-1)


class _Shape(_Probs):
    def forward(self, ids):
        return self.out(self.rnn(self.emb(ids))[0])[..., :10]


class _Fails(_Probs):
    def forward(self, ids):
        raise RuntimeError("expected a mask")


class _Words(_Probs):
    def forward(self, ids):
        return {"text": "hello"}


@pytest.mark.parametrize(
    "cls, message",
    [
        (_Probs, "probabilities"),
        (_Shape, r"scores of shape \(6, 4, 10\)"),
        (_Fails, "forward failed .*expected a mask"),
        (_Words, "returned dict"),
    ],
)
def test_outputs_that_are_not_next_token_scores_are_one_user_error(cls, message):
    with pytest.raises(UserError, match=message) as info:
        adapt(cls())
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="sees the future"):
        adapt(TransformerLM(20, causal=False))


def test_declared_conventions_win_and_a_larger_vocabulary_is_refused(lm_data):
    model = RNNModel("GRU", 20)
    with pytest.raises(UserError, match="output='nonsense'"):
        adapt(model, batch_first=False, output="nonsense", scores="logits", state=True)
    with pytest.raises(UserError, match=f"has {len(lm_data.vocab)} words but"):
        adapt(model, lm_data.vocab)
    # Hugging Face style outputs (.logits) with a time-first model and no state.

    class Out:
        def __init__(self, logits):
            self.logits = logits

    class HFStyle(_Probs):
        def forward(self, ids):
            return Out(self.out(self.rnn(self.emb(ids))[0]))

    lm = adapt(HFStyle())
    assert lm.conventions.to_dict() == dict(batch_first=False, output="tbv", scores="logits", state=False)


def test_latency_table_times_in_place_sites():
    lm = adapt(RNNModel("LSTM", 30)).eval()
    table = LatencyTable(lm, repeats=2, warmup=1)
    plan = {"rnn.weight_hh_l0": {"method": "lowrank", "rank": 2}, "decoder": {"method": "lowrank", "rank": 2}}
    assert table.site_seconds(next(s for s in table.sites if s.name == "rnn.weight_hh_l0"), None) == 0.0
    assert table.estimate_ms(plan) > 0


@pytest.mark.parametrize(
    "mode, proj, bidirectional", [("LSTM", 0, False), ("LSTM", 4, True), ("GRU", 0, True), ("RNN", 0, False)]
)
def test_the_inputs_of_recurrent_matrices_are_replayed_for_calibration(mode, proj, bidirectional):
    torch.manual_seed(0)
    extra = {"proj_size": proj} if proj else {}
    rnn = getattr(nn, mode)(5, 6, 2, bidirectional=bidirectional, batch_first=True, **extra).eval()
    x = torch.randn(3, 7, 5)  # (B, T, in)
    out, _ = rnn(x)
    rows = recurrent_inputs(rnn, x)
    assert set(rows) == set(recurrent_weight_names(rnn))
    for name, r in rows.items():
        assert r.shape == (21, getattr(rnn, name).shape[1])
    width = proj or 6
    top = out.transpose(0, 1)[:, :, :width]  # (T, B, width): the top layer's forward direction
    hh = rows["weight_hh_l1"].reshape(7, 3, width)  # h_{t-1}: h0 = 0, then the outputs shifted by one step
    torch.testing.assert_close(hh[1:], top[:-1])
    assert hh[0].abs().max() == 0
    if proj:  # weight_hr multiplies the unprojected state: projecting it gives the next step's h
        h = F.linear(rows["weight_hr_l1"].reshape(7, 3, 6), rnn.weight_hr_l1)
        torch.testing.assert_close(h[:-1], hh[1:])
    single = getattr(nn, mode)(5, 6, 1, bidirectional=bidirectional, **extra).eval()
    single.load_state_dict({k: v for k, v in rnn.state_dict().items() if "_l0" in k})
    torch.testing.assert_close(rows["weight_ih_l1"].reshape(7, 3, -1), single(x.transpose(0, 1))[0])


def test_the_inputs_of_attention_matrices_are_replayed_for_calibration():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        out, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    rows = attention_inputs(mha, x, x, x, attn_mask=mask)
    torch.testing.assert_close(rows["in_proj_weight"], x.transpose(0, 1).reshape(-1, 8))
    projected = F.linear(rows["out_proj"], mha.out_proj.weight, mha.out_proj.bias).reshape(5, 2, 8)
    torch.testing.assert_close(projected, out.transpose(0, 1))
