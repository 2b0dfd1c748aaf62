#!/usr/bin/env python3
"""Make the golden test fixtures of `ssm` from HuggingFace transformers' MambaForCausalLM.

What it makes (under ``<out>/mamba_tiny/``):

* ``config.json``        -- the ``transformers.MambaConfig`` of a tiny Mamba-1 language model:
                            vocab 101, hidden (E) 38, state (N) 12, 3 layers, kernel (W) 4,
                            expand 2 (inner D = 76), dt rank 5, no linear biases, conv bias,
                            RMSNorm eps 1e-5, tied embeddings, residual in fp32.
* ``model.safetensors``  -- its weights as F32, under HuggingFace's names
                            (``backbone.embeddings.weight``, ``backbone.layers.{i}.norm.weight``,
                            ``backbone.layers.{i}.mixer.{in_proj.weight, conv1d.weight (D,1,W),
                            conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log (D,N),
                            D, out_proj.weight}``, ``backbone.norm_f.weight``; no ``lm_head``, tied).
                            All weights are seeded random values, chosen so that every mixer changes
                            its block's output by far more than rounding (the script checks it).
* ``outputs.safetensors`` -- for three input cases k (0: batch 2 x length 13, 1: 1 x 1, 2: 1 x 40):
                            ``case{k}.input_ids`` (I64, (B,L)) and, as F32,
                            ``case{k}.layer{i}.norm_out``  (B,L,E) the RMSNorm output fed to mixer i,
                            ``case{k}.layer{i}.mixer_out`` (B,L,E) the mixer's output,
                            ``case{k}.layer{i}.hidden``    (B,L,E) the block output = residual + mixer_out,
                            ``case{k}.norm_f``             (B,L,E) after the final RMSNorm,
                            ``case{k}.logits``             (B,L,V).

The reference is the model's slow (pure PyTorch) path in float32 on the CPU. The script also checks
that decoding case 0 token by token through HF's recurrent cache reproduces the full-sequence logits
(skipped with a note if the installed transformers' cache API does not fit).

Everything is seeded and single-threaded: running it twice writes byte-identical files.

Needs Python 3 with torch, transformers, safetensors and numpy. Run from the repository root:

    python3 scripts/make_fixtures.py --out tests/fixtures
"""

import argparse
import json
import math
import os
import sys

# The tiny model runs on the CPU; keep transformers from trying to fetch fused kernels from the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402  (imported after the environment is set)
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from safetensors import safe_open  # noqa: E402

SEED = 1234
CASES = [(2, 13), (1, 1), (1, 40)]  # (batch, length) of each input case
MIN_MIXER_RATIO = 0.05  # ||mixer output|| / ||residual input|| must exceed this in every layer


_DTYPES = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def save_safetensors(tensors, path, metadata):
    """Write `tensors` to `path` in the safetensors format, byte-for-byte reproducibly.

    (safetensors' own `save_file` writes `__metadata__` in hash-map order, which changes from run to run.)
    Layout: u64 little-endian header length, the JSON header (metadata first, then the tensors sorted by
    name, padded with spaces to a multiple of 8 bytes), then the little-endian tensor data back to back.
    """
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        dtype_name, np_dtype = _DTYPES[t.dtype]
        blob = t.detach().cpu().contiguous().numpy().astype(np_dtype, copy=False).tobytes(order="C")
        header[name] = {"dtype": dtype_name, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
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


def make_config():
    """The tiny MambaConfig of the fixtures."""
    config = transformers.MambaConfig(
        vocab_size=101,
        hidden_size=38,
        state_size=12,
        num_hidden_layers=3,
        conv_kernel=4,
        expand=2,
        time_step_rank=5,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        residual_in_fp32=True,
    )
    assert config.intermediate_size == 76, config.intermediate_size
    return config


def uniform_(tensor, low, high, gen):
    """Fill `tensor` in place with U(low, high) drawn from `gen`."""
    tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=torch.float32) * (high - low) + low)


@torch.no_grad()
def randomize_weights(model, gen):
    """Overwrite every weight with seeded, non-trivial random values (see the module docstring)."""
    backbone = model.backbone
    # Linear layers of the backbone first (lm_head is tied to the embeddings and must not be touched).
    for name, module in backbone.named_modules():
        if isinstance(module, torch.nn.Linear):
            s = 1.5 / math.sqrt(module.in_features)
            uniform_(module.weight, -s, s, gen)
            if module.bias is not None and not name.endswith("dt_proj"):
                uniform_(module.bias, -0.1, 0.1, gen)
    emb = backbone.embeddings.weight
    emb.copy_(torch.randn(emb.shape, generator=gen, dtype=torch.float32))
    for layer in backbone.layers:
        mixer = layer.mixer
        d_inner, n_state = mixer.A_log.shape
        width = mixer.conv1d.weight.shape[-1]
        s = 1.5 / math.sqrt(width)
        uniform_(mixer.conv1d.weight, -s, s, gen)
        uniform_(mixer.conv1d.bias, -0.5, 0.5, gen)
        # dt log-uniform in [1e-3, 1e-1]; the bias is its inverse softplus.
        u = torch.rand(d_inner, generator=gen, dtype=torch.float32)
        dt = torch.exp(u * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
        mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.rand((d_inner, n_state), generator=gen, dtype=torch.float32) * (16.0 - 0.5) + 0.5
        mixer.A_log.copy_(torch.log(a))
        uniform_(mixer.D, 0.5, 1.5, gen)
        uniform_(layer.norm.weight, 0.7, 1.3, gen)
    uniform_(backbone.norm_f.weight, 0.7, 1.3, gen)

    # The output head must be the (tied) embedding matrix.
    if model.lm_head.weight.data_ptr() != backbone.embeddings.weight.data_ptr():
        print("note: lm_head is not tied by storage; copying the embeddings into it")
        model.lm_head.weight.copy_(backbone.embeddings.weight)
    assert torch.equal(model.lm_head.weight, backbone.embeddings.weight)


def weight_tensors(model):
    """The weights under HuggingFace's names, F32, contiguous, without the tied lm_head."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("lm_head."):
            continue
        out[name] = tensor.detach().to(torch.float32).contiguous().clone()
    expected = {"backbone.embeddings.weight", "backbone.norm_f.weight"}
    for i in range(model.config.num_hidden_layers):
        p = f"backbone.layers.{i}."
        expected.add(p + "norm.weight")
        for w in ["in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                  "dt_proj.bias", "A_log", "D", "out_proj.weight"]:
            expected.add(p + "mixer." + w)
    assert set(out) == expected, sorted(set(out) ^ expected)
    return out


class Recorder:
    """Forward hooks on each block, its norm and its mixer, and on norm_f."""

    def __init__(self, model):
        self.active = False
        self.store = {}
        self.block_inputs = {}
        self.handles = []
        backbone = model.backbone
        for i, layer in enumerate(backbone.layers):
            self.handles.append(layer.register_forward_hook(self._block_hook(i), with_kwargs=True))
            self.handles.append(layer.norm.register_forward_hook(self._plain_hook(f"layer{i}.norm_out")))
            self.handles.append(layer.mixer.register_forward_hook(self._plain_hook(f"layer{i}.mixer_out")))
        self.handles.append(backbone.norm_f.register_forward_hook(self._plain_hook("norm_f")))

    @staticmethod
    def _first(output):
        return output[0] if isinstance(output, (tuple, list)) else output

    def _plain_hook(self, key):
        def hook(module, args, output):
            if self.active:
                assert key not in self.store, f"{key} recorded twice"
                self.store[key] = self._first(output).detach().to(torch.float32).clone()
        return hook

    def _block_hook(self, i):
        def hook(module, args, kwargs, output):
            if self.active:
                x = args[0] if args else kwargs["hidden_states"]
                self.block_inputs[i] = x.detach().to(torch.float32).clone()
                self.store[f"layer{i}.hidden"] = self._first(output).detach().to(torch.float32).clone()
        return hook

    def start(self):
        self.store = {}
        self.block_inputs = {}
        self.active = True

    def stop(self):
        self.active = False
        return self.store, self.block_inputs


@torch.no_grad()
def check_incremental(model, input_ids, full_logits, tol=1e-4):
    """Decode `input_ids` token by token through HF's cache; compare with the full-sequence logits.

    The first call (cache_params=None, use_cache=True) builds the cache; later calls pass it back with one
    token each. cache_position = [W, W+1, ...] follows MambaForCausalLM.generate of transformers 4.x, whose
    MambaCache needs it; transformers 5.x keeps the state in a DynamicCache and ignores it.
    Skipped (with a note) if the API does not fit.
    """
    try:
        width = model.config.conv_kernel
        length = input_ids.shape[1]
        out = model(input_ids=input_ids[:, :1], use_cache=True)
        cache = out.cache_params
        if cache is None:
            print("incremental check skipped: the model returned no cache_params")
            return
        steps = [out.logits[:, -1]]
        for t in range(1, length):
            pos = torch.tensor([width - 1 + t], dtype=torch.long)
            out = model(input_ids=input_ids[:, t:t + 1], cache_params=cache, use_cache=True,
                        cache_position=pos)
            cache = out.cache_params if out.cache_params is not None else cache
            steps.append(out.logits[:, -1])
        step_logits = torch.stack(steps, dim=1)
    except Exception as err:  # the cache API of this transformers version differs: skip
        print(f"incremental check skipped: {type(err).__name__}: {err}")
        return
    err = (step_logits - full_logits).abs().max().item()
    scale = full_logits.abs().max().item()
    print(f"incremental check (case 0, token by token with cache): max |diff| = {err:.3e} "
          f"(max |logit| = {scale:.3f}, tolerance {tol:g})")
    if not err <= tol:
        raise SystemExit("the cached step-by-step logits differ from the full-sequence logits")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="fixture root; files go to <out>/mamba_tiny/")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")

    config = make_config()
    model = transformers.MambaForCausalLM(config).to(device="cpu", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(SEED)
    randomize_weights(model, gen)
    weights = weight_tensors(model)

    # The reference is the pure PyTorch path (the fused CUDA kernels are only used on CUDA tensors).
    assert model.backbone.layers[0].mixer.x_proj.weight.device.type == "cpu"

    id_gen = torch.Generator().manual_seed(SEED + 1)
    recorder = Recorder(model)
    outputs = {}
    ratios_ok = True
    full_logits_case0 = None
    with torch.no_grad():
        for k, (batch, length) in enumerate(CASES):
            ids = torch.randint(0, config.vocab_size, (batch, length), generator=id_gen, dtype=torch.long)
            recorder.start()
            result = model(input_ids=ids, use_cache=False)
            store, block_inputs = recorder.stop()
            logits = result.logits.detach().to(torch.float32)
            if k == 0:
                full_logits_case0 = logits.clone()
            outputs[f"case{k}.input_ids"] = ids.contiguous()
            for i in range(config.num_hidden_layers):
                norm_out = store[f"layer{i}.norm_out"]
                mixer_out = store[f"layer{i}.mixer_out"]
                hidden = store[f"layer{i}.hidden"]
                residual = block_inputs[i]
                # The block output must be residual + mixer output.
                assert torch.allclose(hidden, residual + mixer_out, rtol=0, atol=1e-6)
                ratio = (mixer_out.norm() / residual.norm()).item()
                print(f"case {k} (B={batch}, L={length}) layer {i}: "
                      f"||mixer_out|| / ||residual|| = {ratio:.4f}")
                ratios_ok &= ratio > MIN_MIXER_RATIO
                outputs[f"case{k}.layer{i}.norm_out"] = norm_out.contiguous()
                outputs[f"case{k}.layer{i}.mixer_out"] = mixer_out.contiguous()
                outputs[f"case{k}.layer{i}.hidden"] = hidden.contiguous()
            outputs[f"case{k}.norm_f"] = store["norm_f"].contiguous()
            outputs[f"case{k}.logits"] = logits.contiguous()
            # The head is the tied embedding matrix applied to norm_f's output.
            head = store["norm_f"] @ weights["backbone.embeddings.weight"].T
            assert torch.allclose(head, logits, rtol=1e-5, atol=1e-4)
    for h in recorder.handles:
        h.remove()
    assert ratios_ok, f"some mixer changes its block by less than {MIN_MIXER_RATIO} of the residual"

    for name, t in outputs.items():
        assert torch.isfinite(t.to(torch.float64)).all(), name

    out_dir = os.path.join(args.out, "mamba_tiny")
    os.makedirs(out_dir, exist_ok=True)
    meta = {"format": "pt", "source": "scripts/make_fixtures.py",
            "transformers": transformers.__version__, "torch": torch.__version__}
    save_safetensors(weights, os.path.join(out_dir, "model.safetensors"), metadata=meta)
    save_safetensors(outputs, os.path.join(out_dir, "outputs.safetensors"), metadata=meta)
    config.to_json_file(os.path.join(out_dir, "config.json"))

    total = 0
    for fname in ["config.json", "model.safetensors", "outputs.safetensors"]:
        size = os.path.getsize(os.path.join(out_dir, fname))
        total += size
        print(f"wrote {fname}: {size} bytes")
    assert total < 2 * 1024 * 1024, f"fixtures too large: {total} bytes"

    # Last, as it feeds the model again: a sanity check of the oracle itself.
    check_incremental(model, outputs["case0.input_ids"], full_logits_case0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
