#!/usr/bin/env python3
"""Make the golden end-to-end language-model fixtures of `ssm` from HuggingFace transformers.

Three tiny Mamba-1 language models, one in each checkpoint shape that users meet, each under
``<out>/lm/<name>/``:

* ``hf_f32_tied/``      -- transformers' convention: ``config.json`` as ``save_pretrained`` writes it for
                           MambaConfig(vocab 131, hidden 48, state 16, 3 layers, kernel 4, expand 2,
                           time_step_rank "auto" = 3, no linear biases, conv bias, eps 1e-5, tied) and
                           ``model.safetensors``, F32, the embedding only (the head is tied, as HF stores it).
* ``mamba_ssm_f16/``    -- mamba_ssm's convention: a ``config.json`` like the state-spaces/mamba-* ones
                           (d_model 40, n_layer 2, vocab_size 100 padded to 104, ssm_cfg d_state 8, d_conv 3,
                           dt_rank 7, tied) and ``pytorch_model.bin``: ``torch.save`` of an (Ordered) state
                           dict with mamba_ssm's key names, all float16, ``lm_head.weight`` sharing its storage
                           with ``backbone.embedding.weight``.
* ``hf_bf16_sharded/``  -- transformers' convention, untied (its own ``lm_head.weight``), BF16 weights in
                           several ``model-0000k-of-0000n.safetensors`` shards with
                           ``model.safetensors.index.json``: MambaConfig(vocab 97, hidden 32, state 12,
                           2 layers, kernel 4, expand 2, time_step_rank 4, conv bias; use_bias is left at
                           HF's default, which is False in transformers 5.17: no in_proj/out_proj biases).

and, for each, ``expected.json``::

    {"cases": [{"ids": [...],                 # token ids, all < vocab_size
                "next_token_logprob": [...],  # log p(ids[i+1] | ids[0..i]) for i = 0..n-2
                "argmax": [...],              # argmax of the logits at each position 0..n-1
                "sum_logprob": float,         # sum of next_token_logprob
                "min_top2_gap": float}, ...], # smallest (best - second best) logit over the positions
     "greedy": [{"prompt": [...],
                 "continuation": [...],       # 24 greedy tokens
                 "min_top2_gap": float}, ...],
     "logits_spread": float}                  # mean over all case positions of the std of the logits row

The expected values come from transformers' MambaForCausalLM (its pure PyTorch path) in float32 on the
CPU, loaded from the STORED weights, read back from the files just written (fp16/bf16 values widened to
fp32). Log-probabilities are log_softmax in float64 of the fp32 logits over the whole row, the padded rows
of mamba_ssm's vocabulary included. Greedy continuations are made by repeated full forward passes, argmax
over the whole (padded) row, no `generate` (no EOS stopping). Case ids and prompts are drawn from seeded
generators and redrawn (deterministically) until no position is a near tie (best - second best logit
below MIN_GAP), so that any correct fp32 implementation reproduces every argmax; greedy continuations
must also stay inside the real (unpadded) vocabulary.

Weights are seeded random values, scaled so that every mixer moves its block by a sizeable fraction of the
residual, the mixers together move the logits by nats, and the selective scan carries information beyond
the reach of the convolutions (the script prints these and checks them). The embedding rows are
0.5 * N(0, 1) and the final norm's weights have random signs: with a tied head and all-positive weights,
every token's own row would win the argmax by tens of nats, and greedy decoding would only repeat the
last token whatever the mixers do.

Everything is seeded and single-threaded: running it twice writes byte-identical files (torch.save's zip
holds a `.data/serialization_id` that another torch build may compute differently; the tensors do not).

Needs Python 3 with torch, transformers (written against 5.17), safetensors and numpy. From the repo root:

    python3 scripts/make_lm_fixtures.py --out tests/fixtures
"""

import argparse
import collections
import copy
import glob
import json
import math
import os
import shutil
import sys
import tempfile

# The tiny models run on the CPU; keep transformers from trying to fetch fused kernels from the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402  (imported after the environment is set)
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

SEED = 4321
CASE_LENGTHS = (1, 9, 33)
PROMPT_LENGTHS = (1, 7)
GREEDY_STEPS = 24
MIN_GAP = 5e-3  # smallest allowed (best - second best) logit, in nats, at every argmax that is recorded
MAX_TRIES = 200  # redraws of a case or prompt before giving up
MIN_MIXER_RATIO = 0.1  # ||mixer output|| / ||residual input||, every layer
MIN_MIXER_EFFECT = 1.0  # mean |logit change| (nats) when every mixer's output is replaced by zeros
MIN_MEMORY_EFFECT = 0.02  # mean |logit change| (nats) out of the convolutions' reach when a prefix changes
MIN_SPREAD = 1.0  # mean std of a logits row (nats)
EMBED_SCALE = 0.5  # std of the embedding rows
PAD_ROW_SCALE = 0.5  # mamba_ssm's padded embedding rows are untrained: smaller than the real ones (times this)
SHARD_BYTES = 20000  # the largest shard of hf_bf16_sharded (HF's rule: a shard ends before it would pass this)
DT_RANGE = (1e-2, 1.0)  # dt log-uniform in this range (the dt_proj bias is its inverse softplus)
A_RANGE = (0.25, 8.0)  # -A uniform in this range

MODELS = [
    {
        "name": "hf_f32_tied",
        "layout": "hf",
        "dtype": torch.float32,
        "vocab_size": 131,
        "config": dict(vocab_size=131, hidden_size=48, state_size=16, num_hidden_layers=3, conv_kernel=4,
                       expand=2, time_step_rank="auto", use_bias=False, use_conv_bias=True,
                       layer_norm_epsilon=1e-5, tie_word_embeddings=True),
        "check": dict(intermediate_size=96, time_step_rank=3),
    },
    {
        "name": "mamba_ssm_f16",
        "layout": "mamba_ssm",
        "dtype": torch.float16,
        "vocab_size": 100,
        # mamba_ssm's own config.json, key order as in the brief of the fixture.
        "mamba_ssm_config": collections.OrderedDict([
            ("d_model", 40), ("n_layer", 2), ("vocab_size", 100),
            ("ssm_cfg", collections.OrderedDict([("d_state", 8), ("d_conv", 3), ("dt_rank", 7)])),
            ("rms_norm", True), ("residual_in_fp32", True), ("fused_add_norm", True),
            ("pad_vocab_size_multiple", 8), ("tie_embeddings", True)]),
        # The equivalent HF config (vocab padded up to a multiple of 8).
        "config": dict(vocab_size=104, hidden_size=40, state_size=8, num_hidden_layers=2, conv_kernel=3,
                       expand=2, time_step_rank=7, use_bias=False, use_conv_bias=True,
                       layer_norm_epsilon=1e-5, tie_word_embeddings=True, residual_in_fp32=True),
        "check": dict(intermediate_size=80, time_step_rank=7),
    },
    {
        "name": "hf_bf16_sharded",
        "layout": "hf_sharded",
        "dtype": torch.bfloat16,
        "vocab_size": 97,
        "config": dict(vocab_size=97, hidden_size=32, state_size=12, num_hidden_layers=2, conv_kernel=4,
                       expand=2, time_step_rank=4, use_conv_bias=True, tie_word_embeddings=False),
        "check": dict(intermediate_size=64, time_step_rank=4),
    },
]

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


# ----------------------------------------------------------------------------------------------- files

def tensor_bytes(t):
    """The little-endian bytes of `t` in row-major order."""
    assert sys.byteorder == "little"
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # numpy has no bfloat16; the bits are what is stored
    return t.numpy().tobytes(order="C")


def save_safetensors(tensors, path, metadata):
    """Write `tensors` to `path` in the safetensors format, byte-for-byte reproducibly.

    Layout: u64 little-endian header length, the JSON header (metadata first, then the tensors sorted by
    name, padded with spaces to a multiple of 8 bytes), then the tensor data back to back.
    """
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        blob = tensor_bytes(t)
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    # Read it back with the reference implementation.
    loaded = load_file(path)
    assert set(loaded) == set(tensors), path
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), (path, name)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata, path


def write_json(obj, path, **kwargs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, **kwargs))


# ----------------------------------------------------------------------------------------------- weights

def make_config(spec):
    config = transformers.MambaConfig(**spec["config"])
    for key, value in spec["check"].items():
        assert getattr(config, key) == value, (spec["name"], key, getattr(config, key))
    return config


def uniform_(tensor, low, high, gen):
    """Fill `tensor` in place with U(low, high) drawn from `gen`."""
    tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=torch.float32) * (high - low) + low)


def log_uniform(shape, low, high, gen):
    u = torch.rand(shape, generator=gen, dtype=torch.float32)
    return torch.exp(u * (math.log(high) - math.log(low)) + math.log(low))


@torch.no_grad()
def randomize_weights(model, gen, real_vocab):
    """Overwrite every weight of the fp32 HF `model` with seeded random values (see the module docstring)."""
    for p in model.parameters():
        p.fill_(float("nan"))  # so that a weight left out shows up below
    backbone = model.backbone
    for name, module in backbone.named_modules():
        if isinstance(module, torch.nn.Linear):
            s = 1.5 / math.sqrt(module.in_features)
            uniform_(module.weight, -s, s, gen)
            if module.bias is not None and not name.endswith("dt_proj"):
                uniform_(module.bias, -0.1, 0.1, gen)
    emb = backbone.embeddings.weight
    emb.copy_(torch.randn(emb.shape, generator=gen, dtype=torch.float32) * EMBED_SCALE)
    emb[real_vocab:] *= PAD_ROW_SCALE
    for layer in backbone.layers:
        mixer = layer.mixer
        d_inner, n_state = mixer.A_log.shape
        width = mixer.conv1d.weight.shape[-1]
        s = 1.5 / math.sqrt(width)
        uniform_(mixer.conv1d.weight, -s, s, gen)
        uniform_(mixer.conv1d.bias, -0.5, 0.5, gen)
        dt = log_uniform(d_inner, DT_RANGE[0], DT_RANGE[1], gen)
        mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.rand((d_inner, n_state), generator=gen, dtype=torch.float32) * (A_RANGE[1] - A_RANGE[0]) \
            + A_RANGE[0]
        mixer.A_log.copy_(torch.log(a))
        uniform_(mixer.D, 0.5, 1.5, gen)
        uniform_(layer.norm.weight, 0.7, 1.3, gen)
    uniform_(backbone.norm_f.weight, 0.7, 1.3, gen)
    signs = torch.randint(0, 2, backbone.norm_f.weight.shape, generator=gen).to(torch.float32) * 2 - 1
    backbone.norm_f.weight.mul_(signs)
    tied = model.config.tie_word_embeddings
    shared = model.lm_head.weight.data_ptr() == emb.data_ptr()
    if tied:
        if not shared:
            print("note: lm_head is not tied by storage; copying the embeddings into it")
            model.lm_head.weight.copy_(emb)
    else:
        assert not shared, "tie_word_embeddings=False, but lm_head shares the embeddings' storage"
        head = model.lm_head.weight
        head.copy_(torch.randn(head.shape, generator=gen, dtype=torch.float32))
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} was not set"


def hf_weight_names(config):
    names = ["backbone.embeddings.weight", "backbone.norm_f.weight"]
    for i in range(config.num_hidden_layers):
        p = f"backbone.layers.{i}."
        names.append(p + "norm.weight")
        for w in ["in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                  "dt_proj.bias", "A_log", "D", "out_proj.weight"]:
            names.append(p + "mixer." + w)
        if config.use_bias:
            names += [p + "mixer.in_proj.bias", p + "mixer.out_proj.bias"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def stored_weights(model, dtype):
    """HF's state dict in `dtype`, in HF's order, without the tied head."""
    tied = model.config.tie_word_embeddings
    out = collections.OrderedDict()
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out[name] = t.detach().to(dtype).contiguous().clone()
    expected = set(hf_weight_names(model.config))
    assert set(out) == expected, sorted(set(out) ^ expected)
    return out


def reference_model(config, weights):
    """An fp32 MambaForCausalLM on the CPU holding `weights` (HF names, any float dtype) widened to fp32."""
    model = transformers.MambaForCausalLM(config).to(device="cpu", dtype=torch.float32).eval()
    fp32 = {name: t.to(torch.float32) for name, t in weights.items()}
    result = model.load_state_dict(fp32, strict=False)
    missing = set(result.missing_keys) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    assert not missing and not result.unexpected_keys, (result.missing_keys, result.unexpected_keys)
    with torch.no_grad():
        if config.tie_word_embeddings and model.lm_head.weight.data_ptr() != \
                model.backbone.embeddings.weight.data_ptr():
            model.lm_head.weight.copy_(model.backbone.embeddings.weight)
    for name, t in model.state_dict().items():
        src = fp32["backbone.embeddings.weight" if name == "lm_head.weight" and name not in fp32 else name]
        assert torch.equal(t, src), name
    assert model.backbone.layers[0].mixer.x_proj.weight.device.type == "cpu"
    return model


# ----------------------------------------------------------------------------------------------- mamba_ssm

class _Mamba(torch.nn.Module):
    """The parameters of mamba_ssm.modules.mamba_simple.Mamba, registered as it registers them."""

    def __init__(self, d_model, d_inner, d_state, d_conv, dt_rank):
        super().__init__()
        self.in_proj = torch.nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = torch.nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = torch.nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = torch.nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = torch.nn.Parameter(torch.zeros(d_inner, d_state))
        self.D = torch.nn.Parameter(torch.ones(d_inner))
        self.out_proj = torch.nn.Linear(d_inner, d_model, bias=False)


class _RMSNorm(torch.nn.Module):
    """mamba_ssm.ops.triton.layernorm.RMSNorm's parameters (no bias)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.register_parameter("bias", None)


class _Block(torch.nn.Module):
    def __init__(self, mixer, dim):
        super().__init__()
        self.mixer = mixer
        self.norm = _RMSNorm(dim)


class _MixerModel(torch.nn.Module):
    def __init__(self, d_model, n_layer, vocab, mixer_args):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, d_model)
        self.layers = torch.nn.ModuleList([_Block(_Mamba(d_model, *mixer_args), d_model) for _ in range(n_layer)])
        self.norm_f = _RMSNorm(d_model)


class _MambaLMHeadModel(torch.nn.Module):
    """The module tree of mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel, tied as it ties."""

    def __init__(self, d_model, n_layer, vocab, mixer_args):
        super().__init__()
        self.backbone = _MixerModel(d_model, n_layer, vocab, mixer_args)
        self.lm_head = torch.nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight


def mamba_ssm_padded_vocab(cfg):
    m = cfg["pad_vocab_size_multiple"]
    return cfg["vocab_size"] + (-cfg["vocab_size"]) % m


@torch.no_grad()
def save_mamba_ssm(hf_weights, cfg, path):
    """torch.save mamba_ssm's float16 state dict, made from `hf_weights` (HF names, float16)."""
    ssm = cfg["ssm_cfg"]
    d_model = cfg["d_model"]
    d_inner = 2 * d_model  # mamba_ssm's default expand
    dt_rank = ssm["dt_rank"]
    vocab = mamba_ssm_padded_vocab(cfg)
    module = _MambaLMHeadModel(d_model, cfg["n_layer"], vocab, (d_inner, ssm["d_state"], ssm["d_conv"], dt_rank))
    module = module.half()
    state = {name.replace("backbone.embeddings.", "backbone.embedding."): t for name, t in hf_weights.items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    sd = module.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["backbone.embedding.weight"].data_ptr()
    for name, t in sd.items():
        assert t.dtype == torch.float16 and torch.equal(t, state[name]), name
    torch.save(sd, path)
    return list(sd.keys())


def load_mamba_ssm(path, key_order, cfg):
    """Read `path` back as mamba_ssm would; check it; return the weights under HF's names."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert list(sd.keys()) == key_order, list(sd.keys())
    for name, t in sd.items():
        assert t.dtype == torch.float16, (name, t.dtype)
    emb = sd["backbone.embedding.weight"]
    assert tuple(emb.shape) == (mamba_ssm_padded_vocab(cfg), cfg["d_model"]), emb.shape
    assert sd["lm_head.weight"].untyped_storage().data_ptr() == emb.untyped_storage().data_ptr(), \
        "lm_head.weight does not share the embedding's storage"
    d_inner = 2 * cfg["d_model"]
    assert tuple(sd["backbone.layers.0.mixer.conv1d.weight"].shape) == (d_inner, 1, cfg["ssm_cfg"]["d_conv"])
    out = collections.OrderedDict()
    for name, t in sd.items():
        if name == "lm_head.weight":
            continue
        out[name.replace("backbone.embedding.", "backbone.embeddings.")] = t
    return out


# ----------------------------------------------------------------------------------------------- HF layouts

def hf_save_pretrained(model, dtype, tmp, max_shard_size=None):
    """save_pretrained a copy of `model` in `dtype` into `tmp`; return its config.json text (None if it fails)."""
    try:
        stored = copy.deepcopy(model).to(dtype)
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        stored.save_pretrained(tmp, **kwargs)
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
            return f.read()
    except Exception as err:  # noqa: BLE001  (report and fall back)
        print(f"note: save_pretrained failed ({type(err).__name__}: {err}); writing config.to_json_string")
        return None


def compare_with_hf_files(tmp, tensors):
    """Print whether HF's own save_pretrained stored the same tensors as the fixture (informative)."""
    files = sorted(glob.glob(os.path.join(tmp, "*.safetensors")))
    theirs = {}
    for fname in files:
        theirs.update(load_file(fname))
    same_keys = set(theirs) == set(tensors)
    same = same_keys and all(theirs[k].dtype == t.dtype and torch.equal(theirs[k], t) for k, t in tensors.items())
    print(f"  HF save_pretrained wrote {len(files)} safetensors file(s); same tensors as the fixture: {same}"
          + ("" if same_keys else f" (key difference: {sorted(set(theirs) ^ set(tensors))})"))
    index = os.path.join(tmp, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            return json.load(f)
    return None


def write_hf_shards(tensors, out_dir, max_bytes, hf_index):
    """Shard `tensors` (in order) as HF does; write the shards and model.safetensors.index.json."""
    shards = [[]]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    count = len(shards)
    assert count >= 2, count
    weight_map = {}
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{count:05d}.safetensors"
        save_safetensors({n: tensors[n] for n in names}, os.path.join(out_dir, fname), {"format": "pt"})
        for n in names:
            weight_map[n] = fname
    metadata = {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}
    if hf_index is not None and "total_parameters" in hf_index.get("metadata", {}):
        metadata["total_parameters"] = sum(t.numel() for t in tensors.values())
    if hf_index is not None:
        print(f"  HF's index metadata: {hf_index.get('metadata')}; the fixture's: {metadata}; "
              f"same weight_map as HF's: {hf_index.get('weight_map') == weight_map}")
    index = {"metadata": metadata, "weight_map": weight_map}
    write_json(index, os.path.join(out_dir, "model.safetensors.index.json"), indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "a", encoding="utf-8") as f:
        f.write("\n")
    return [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]


def load_hf_dir(out_dir):
    """Every tensor of the safetensors files of `out_dir` (through the index if there is one)."""
    index = os.path.join(out_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fname in files:
        part = load_file(os.path.join(out_dir, fname))
        assert not set(part) & set(out)
        out.update(part)
    return out


# ----------------------------------------------------------------------------------------------- outputs

@torch.no_grad()
def logits_of(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    logits = out.logits[0]
    assert logits.dtype == torch.float32 and logits.shape[0] == len(ids)
    return logits


def top2_gaps(logits):
    """(argmax, best - second best) per row, from the fp32 logits, in float64."""
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    top = torch.topk(lp, 2, dim=-1)
    arg = torch.argmax(logits, dim=-1)
    assert torch.equal(arg, top.indices[:, 0])
    return arg.tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


def make_case(model, ids):
    logits = logits_of(model, ids)
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    nxt = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    arg, gaps = top2_gaps(logits)
    case = {"ids": list(ids), "next_token_logprob": nxt, "argmax": arg, "sum_logprob": float(sum(nxt)),
            "min_top2_gap": float(min(gaps))}
    return case, logits


def case_ids(vocab, length, attempt, gen):
    """Attempt `attempt` at a case of `length` ids spread over the vocabulary, the last ids included."""
    if length == 1:
        return [vocab - 1 - attempt]
    ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
    ids[length // 3] = vocab - 1
    ids[(2 * length) // 3] = 0
    ids[-1] = vocab - 2
    return ids


@torch.no_grad()
def greedy(model, prompt, real_vocab):
    seq = list(prompt)
    gaps = []
    for _ in range(GREEDY_STEPS):
        arg, gap = top2_gaps(logits_of(model, seq)[-1:])
        seq.append(arg[0])
        gaps.append(gap[0])
    return seq[len(prompt):], gaps


@torch.no_grad()
def diagnostics(model, config, ids, gen, real_vocab):
    """Print and check: per-layer mixer/residual ratios, the mixers' and the scan's effect on the logits."""
    store = {}
    handles = []
    for i, layer in enumerate(model.backbone.layers):
        def pre(module, args, kwargs, i=i):
            store[("in", i)] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        def post(module, args, output, i=i):
            store[("mix", i)] = (output[0] if isinstance(output, (tuple, list)) else output).detach().clone()
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.mixer.register_forward_hook(post))
    full = logits_of(model, ids)
    for h in handles:
        h.remove()
    ratios = [(store[("mix", i)].norm() / store[("in", i)].norm()).item() for i in range(config.num_hidden_layers)]

    def zero(module, args, output):
        if isinstance(output, (tuple, list)):
            return (torch.zeros_like(output[0]),) + tuple(output[1:])
        return torch.zeros_like(output)
    handles = [layer.mixer.register_forward_hook(zero) for layer in model.backbone.layers]
    nomix = logits_of(model, ids)
    for h in handles:
        h.remove()
    mixer_effect = (full - nomix).abs().mean().item()

    # Change the first 10 tokens; positions past every convolution's reach see them only through the scan.
    changed = list(ids)
    changed[:10] = torch.randint(0, real_vocab, (10,), generator=gen).tolist()
    start = 10 + config.num_hidden_layers * (config.conv_kernel - 1)
    other = logits_of(model, changed)
    memory_effect = (full[start:] - other[start:]).abs().mean().item()
    spread = full.std(dim=-1).mean().item()
    print("  ||mixer_out|| / ||residual|| per layer: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(f"  mean |logit change| with every mixer off: {mixer_effect:.3f} nats; "
          f"past the convolutions' reach (positions >= {start}) when tokens 0..9 change: {memory_effect:.4f} nats")
    value_range = (full.max(-1).values - full.min(-1).values).mean().item()
    print(f"  logits: mean row std {spread:.3f}, mean row range {value_range:.3f}")
    failures = []
    if not min(ratios) > MIN_MIXER_RATIO:
        failures.append(f"a mixer ratio is below {MIN_MIXER_RATIO}")
    if not mixer_effect > MIN_MIXER_EFFECT:
        failures.append(f"the mixers move the logits by less than {MIN_MIXER_EFFECT} nats")
    if not memory_effect > MIN_MEMORY_EFFECT:
        failures.append(f"the scan's memory moves the logits by less than {MIN_MEMORY_EFFECT} nats")
    if not spread > MIN_SPREAD:
        failures.append(f"the logits spread less than {MIN_SPREAD} nats")
    return failures


def make_expected(model, config, spec, seed):
    real_vocab = spec["vocab_size"]
    gen = torch.Generator().manual_seed(seed + 1)
    cases = []
    all_logits = []
    for length in CASE_LENGTHS:
        for attempt in range(MAX_TRIES):
            ids = case_ids(real_vocab, length, attempt, gen)
            case, logits = make_case(model, ids)
            if case["min_top2_gap"] >= MIN_GAP:
                break
            print(f"  case of length {length}: near tie (gap {case['min_top2_gap']:.2e}); redrawing")
        else:
            raise SystemExit(f"no case of length {length} without a near tie")
        cases.append(case)
        all_logits.append(logits)
        print(f"  case L={length}: sum_logprob {case['sum_logprob']:.4f}, min top-2 gap {case['min_top2_gap']:.4f}")
    padded = config.vocab_size - real_vocab
    if padded:
        rows = torch.cat(all_logits).to(torch.float64)
        p = torch.softmax(rows, dim=-1)[:, real_vocab:].sum(-1)
        lse_shift = (torch.logsumexp(rows, -1) - torch.logsumexp(rows[:, :real_vocab], -1)).max().item()
        print(f"  padded rows ({padded}): largest softmax mass {p.max().item():.3e}, "
              f"largest logprob shift from including them {lse_shift:.3e}")
    failures = diagnostics(model, config, cases[-1]["ids"], gen, real_vocab)

    greedy_out = []
    for length in PROMPT_LENGTHS:
        for attempt in range(MAX_TRIES):
            prompt = torch.randint(0, real_vocab, (length,), generator=gen).tolist()
            cont, gaps = greedy(model, prompt, real_vocab)
            if min(gaps) >= MIN_GAP and max(cont) < real_vocab:
                break
            print(f"  greedy prompt {prompt}: min gap {min(gaps):.2e}, max token {max(cont)}; redrawing")
        else:
            raise SystemExit(f"no greedy prompt of length {length} without a near tie")
        greedy_out.append({"prompt": prompt, "continuation": cont, "min_top2_gap": float(min(gaps))})
        print(f"  greedy prompt {prompt} -> {cont}")
        print("    top-2 gaps per step: " + " ".join(f"{g:.3f}" for g in gaps) + f"  (min {min(gaps):.4f})")
    spread = torch.cat([l.std(dim=-1) for l in all_logits]).mean().item()
    return {"cases": cases, "greedy": greedy_out, "logits_spread": float(spread)}, failures


@torch.no_grad()
def check_from_pretrained(out_dir, model, ids):
    """Load the fixture with transformers' from_pretrained: it must give the reference's logits exactly."""
    try:
        loaded = transformers.MambaForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001
        print(f"  from_pretrained check skipped: {type(err).__name__}: {err}")
        return
    loaded = loaded.to(torch.float32).eval()
    diff = (logits_of(loaded, ids) - logits_of(model, ids)).abs().max().item()
    print(f"  from_pretrained({os.path.basename(out_dir)}) reproduces the reference logits: max |diff| {diff:.3e}")
    if diff > 1e-6:
        raise SystemExit("the fixture loaded by from_pretrained differs from the reference")


# ----------------------------------------------------------------------------------------------- main

def build(spec, index, root):
    name = spec["name"]
    print(f"== {name}")
    seed = SEED + 1000 * index
    config = make_config(spec)
    print(f"  vocab {config.vocab_size} (real {spec['vocab_size']}), E {config.hidden_size}, "
          f"D {config.intermediate_size}, N {config.state_size}, W {config.conv_kernel}, R {config.time_step_rank}, "
          f"layers {config.num_hidden_layers}, use_bias {config.use_bias}, tied {config.tie_word_embeddings}, "
          f"stored as {spec['dtype']}")
    torch.manual_seed(seed)
    source = transformers.MambaForCausalLM(config).to(device="cpu", dtype=torch.float32).eval()
    randomize_weights(source, torch.Generator().manual_seed(seed), spec["vocab_size"])
    weights = stored_weights(source, spec["dtype"])
    out_dir = os.path.join(root, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    files = []
    if spec["layout"] == "mamba_ssm":
        cfg = spec["mamba_ssm_config"]
        assert mamba_ssm_padded_vocab(cfg) == config.vocab_size
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(cfg))
        order = save_mamba_ssm(weights, cfg, os.path.join(out_dir, "pytorch_model.bin"))
        files += ["config.json", "pytorch_model.bin"]
        stored = load_mamba_ssm(os.path.join(out_dir, "pytorch_model.bin"), order, cfg)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sharded = spec["layout"] == "hf_sharded"
            text = hf_save_pretrained(source, spec["dtype"], tmp, SHARD_BYTES if sharded else None)
            if text is None:
                text = config.to_json_string()
            with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            hf_index = compare_with_hf_files(tmp, weights)
            if sharded:
                files += ["config.json"] + write_hf_shards(weights, out_dir, SHARD_BYTES, hf_index)
                files.append("model.safetensors.index.json")
            else:
                save_safetensors(weights, os.path.join(out_dir, "model.safetensors"), {"format": "pt"})
                files += ["config.json", "model.safetensors"]
        stored = load_hf_dir(out_dir)
        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
            saved_cfg = json.load(f)
        for key in ["vocab_size", "hidden_size", "state_size", "num_hidden_layers", "conv_kernel",
                    "time_step_rank", "intermediate_size", "tie_word_embeddings", "use_conv_bias", "use_bias"]:
            if key not in saved_cfg:
                print(f"  note: config.json has no {key} (the default, {getattr(config, key)!r}, applies)")
            else:
                assert saved_cfg[key] == getattr(config, key), (key, saved_cfg[key])
    assert set(stored) == set(weights)
    for k, t in weights.items():
        assert stored[k].dtype == spec["dtype"] and torch.equal(stored[k], t), k

    model = reference_model(config, stored)
    expected, failures = make_expected(model, config, spec, seed)
    write_json(expected, os.path.join(out_dir, "expected.json"), indent=1)
    files.append("expected.json")
    if spec["layout"] != "mamba_ssm":
        check_from_pretrained(out_dir, model, expected["cases"][-1]["ids"])
    total = 0
    for fname in files:
        size = os.path.getsize(os.path.join(out_dir, fname))
        total += size
        print(f"  wrote {name}/{fname}: {size} bytes")
    assert sorted(files) == sorted(os.listdir(out_dir)), os.listdir(out_dir)
    assert total < 1024 * 1024, f"{name} is too large: {total} bytes"
    return [f"{name}: {f}" for f in failures]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="fixture root; files go to <out>/lm/<name>/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    root = os.path.join(args.out, "lm")
    os.makedirs(root, exist_ok=True)
    failures = []
    for index, spec in enumerate(MODELS):
        failures += build(spec, index, root)
    if failures:  # checked last, so that one run shows every model's numbers
        raise SystemExit("weights too weak:\n" + "\n".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
