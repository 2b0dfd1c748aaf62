#!/usr/bin/env python3
"""Train the small Mamba language model `models/fortunes-mamba/` on Debian's fortune cookies.

Input (from scripts/prepare_fortunes.py): data/fortunes/{train,dev,valid}.txt and the byte-level BPE
tokenizer models/fortunes-mamba/tokenizer.json (4096 ids). Each file, tokenized whole, is the token stream
"<|endoftext|> fortune <|endoftext|> fortune ... <|endoftext|>".

Model: transformers' MambaForCausalLM (Mamba-1), d_model 256, 6 layers, d_state 16, d_conv 4, expand 2,
dt_rank 16, no linear biases, conv bias, RMSNorm eps 1e-5, tied embeddings, vocabulary 4096. Initialized
as mamba_ssm initializes (embedding N(0, 0.02); PyTorch's default for linear and conv layers; out_proj
scaled by 1/sqrt(n_layer); dt log-uniform in [1e-3, 1e-1] through the dt_proj bias; A = -(1..16); D = 1).

Training: the mixers' forward is replaced by a pure-PyTorch one with a parallel (Hillis-Steele) selective
scan and a hand-written backward (the reverse scan), the same mathematics as transformers' slow path,
checked against it in float32 before training. bf16 autocast (the scan, softplus and gates in fp32),
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), gradient clipping at 1.0, batches of 32 random
windows of 256+1 tokens of train.txt, learning rate 3e-3 with 2 % warm-up and a cosine decay to 10 %.

The corpus is small (0.8 M tokens), so the length of training matters more than throughput: the runs
of --runs NAME:EPOCHS,... differ only in how many epochs they may take and are trained at once on the one
GPU (processes of this script), each with the wall-clock budget --budget; a run's cosine schedule follows
its progress max(elapsed / budget, steps / (EPOCHS * steps per epoch)), so it always ends its schedule in
time. Every quarter epoch each run measures its loss on dev.txt and keeps its best weights. The run and
the weights with the lowest dev loss are the model; valid.txt is never looked at during training or
selection. The defaults are those of the committed model: four runs sharing an H200 for 230 s, each of
which got through about 4.5 epochs (435 steps), its schedule ended by the clock; the chosen one ("time")
is, in effect, a 435-step cosine schedule, which `--runs e4.5:4.5` gives with a fixed number of steps on any
GPU (about a minute on one H200). A single run of 12 epochs overfits from the third epoch on (dev loss
4.35 at best, against 4.23): see docs/trained-model.md.

Export (into --out): config.json as save_pretrained writes it, model.safetensors (float16, written
deterministically: tensors sorted by name, the tied head left out, as transformers stores it) and
expected.json; then, from the STORED weights widened to float32 (TF32 off):

* perplexity of valid.txt and dev.txt streamed whole through the state (what `ssm perplexity` computes on
  the file's ids), per token and per byte of text, and per fortune (each from a fresh state);
* expected.json for the C++ tests, made with transformers' own MambaForCausalLM in float32 on the CPU
  (its sequential path; the same conventions as tests/fixtures/lm/*/expected.json):
  {"cases": [{"text", "ids", "next_token_logprob", "argmax", "sum_logprob", "min_top2_gap"}, ...],
   "greedy": [{"prompt_text", "prompt", "continuation", "continuation_text", "top2_gaps", "min_top2_gap"}],
   "valid_stream": {...}}
  cases: three short fortunes of valid.txt, ids starting with <|endoftext|> (0); log_softmax in float64 of
  the fp32 logits over the whole row; greedy: 32 tokens by repeated full forward passes, no EOS stopping.

The report (into --report): training.json (the runs, their loss curves, the selection, the evaluation),
samples.txt and run.log.

Needs Python 3 with torch (2.11), transformers (5.17), tokenizers, safetensors and numpy, and a CUDA GPU
(--device cpu works for a smoke test with --smoke). From the repo root:

    python3 scripts/train_fortunes.py --out models/fortunes-mamba --report models/fortunes-mamba

(--report also gets run.log, which is not committed.)
"""

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

EOT_ID = 0
SEED = 1234
GREEDY_STEPS = 32
CASE_TOKENS = (12, 48)  # length range (with the leading <|endoftext|>) of the held-out cases
PROMPTS = ["The best way to", "A man walks into a bar", "Q: What is"]
SAMPLE_PROMPTS = PROMPTS + ["Q: How many", "Life is", "There was a young lady", "Computers are", "It is"]
MIN_GAP = 5e-3

# The runs trained side by side: they differ only in how many epochs they may take (1000: only the
# wall-clock budget stops it).
RUNS = "e06:6,e12:12,e24:24,time:1000"
HPARAMS = dict(d_model=256, n_layer=6, batch=32, seq_len=256, lr=3e-3, min_lr_ratio=0.1, warmup=0.02,
               weight_decay=0.1, betas=(0.9, 0.95), clip=1.0, evals_per_epoch=4)
SMOKE = dict(d_model=32, n_layer=2, batch=4, seq_len=64, evals_per_epoch=400)


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------- model

def make_config(hp, vocab):
    config = transformers.MambaConfig(
        vocab_size=vocab, hidden_size=hp["d_model"], state_size=16, num_hidden_layers=hp["n_layer"],
        conv_kernel=4, expand=2, time_step_rank="auto", use_bias=False, use_conv_bias=True,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, residual_in_fp32=True, bos_token_id=EOT_ID,
        eos_token_id=EOT_ID, pad_token_id=1, initializer_range=0.02,
        # init_weights scales out_proj itself. With this true, transformers 5.17's from_pretrained divides
        # the LOADED out_proj weights by sqrt(n_layer) again (it runs _init_weights after loading).
        rescale_prenorm_residual=False)
    assert config.intermediate_size == 2 * hp["d_model"]
    return config


@torch.no_grad()
def init_weights(model, seed):
    """mamba_ssm's initialization (see the module docstring), seeded."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config

    def kaiming_uniform(w):  # nn.Linear / nn.Conv1d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        fan_in = w[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        w.copy_((torch.rand(w.shape, generator=gen) * 2 - 1) * bound)
        return bound

    bb = model.backbone
    bb.embeddings.weight.copy_(torch.randn(bb.embeddings.weight.shape, generator=gen) * 0.02)
    for layer in bb.layers:
        m = layer.mixer
        layer.norm.weight.fill_(1.0)
        kaiming_uniform(m.in_proj.weight)
        bound = kaiming_uniform(m.conv1d.weight)
        m.conv1d.bias.copy_((torch.rand(m.conv1d.bias.shape, generator=gen) * 2 - 1) * bound)
        kaiming_uniform(m.x_proj.weight)
        r = cfg.time_step_rank
        m.dt_proj.weight.copy_((torch.rand(m.dt_proj.weight.shape, generator=gen) * 2 - 1) * r ** -0.5)
        u = torch.rand(m.dt_proj.bias.shape, generator=gen)
        dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        n = m.A_log.shape[1]
        m.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(m.A_log))
        m.D.fill_(1.0)
        kaiming_uniform(m.out_proj.weight)
        m.out_proj.weight.div_(math.sqrt(cfg.num_hidden_layers))
    bb.norm_f.weight.fill_(1.0)
    assert model.lm_head.weight.data_ptr() == bb.embeddings.weight.data_ptr(), "the head is not tied"


def _scan(a, b):
    """h_t = a_t * h_{t-1} + b_t along dim 1, h_{-1} = 0, by Hillis-Steele doubling (no autograd)."""
    a = a.clone()
    b = b.clone()
    length = a.shape[1]
    k = 1
    while k < length:
        b[:, k:] += a[:, k:] * b[:, :-k]
        if 2 * k < length:
            a[:, k:] = a[:, k:] * a[:, :-k]
        k *= 2
    return b


class LinearScan(torch.autograd.Function):
    """The selective scan's recurrence with its exact backward: g_t = dh_t + a_{t+1} g_{t+1},
    d a_t = g_t h_{t-1}, d b_t = g_t."""

    @staticmethod
    def forward(ctx, a, b):
        h = _scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, dh):
        a, h = ctx.saved_tensors
        a_next = torch.zeros_like(a)
        a_next[:, :-1] = a[:, 1:]
        g = _scan(a_next.flip(1), dh.flip(1)).flip(1)
        h_prev = torch.zeros_like(h)
        h_prev[:, 1:] = h[:, :-1]
        return g * h_prev, g


def fast_mixer_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """MambaMixer.forward without a cache: transformers' slow path with a parallel scan."""
    if cache_params is not None or attention_mask is not None:
        raise RuntimeError("the training forward takes neither a cache nor an attention mask")
    _, length, _ = hidden_states.shape
    x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
    width = self.conv1d.weight.shape[-1]
    x = F.conv1d(x.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, padding=width - 1,
                 groups=self.intermediate_size)[..., :length]
    x = F.silu(x).transpose(1, 2)  # (B, L, D)
    dt, b, c = torch.split(self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    dt = F.softplus((dt @ self.dt_proj.weight.t()).float() + self.dt_proj.bias.float())  # (B, L, D)
    a = -torch.exp(self.A_log.float())  # (D, N)
    xf = x.float()
    da = torch.exp(dt.unsqueeze(-1) * a)  # (B, L, D, N)
    dbu = (dt * xf).unsqueeze(-1) * b.float().unsqueeze(2)  # (B, L, D, N)
    h = LinearScan.apply(da, dbu)
    y = torch.einsum("bldn,bln->bld", h, c.float())
    y = y + xf * self.D.float()
    y = y * F.silu(z.float())
    return self.out_proj(y.to(hidden_states.dtype))


def patch_fast(model):
    for layer in model.backbone.layers:
        layer.mixer.forward = fast_mixer_forward.__get__(layer.mixer)
    return model


def logits_of(model, ids_2d):
    return model(input_ids=ids_2d, use_cache=False).logits


# ----------------------------------------------------------------------------------------------- data

def tokenize(tok, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids[0] == EOT_ID and ids[-1] == EOT_ID, path
    return np.asarray(ids, dtype=np.uint16), text


def documents(text):
    parts = text.split("<|endoftext|>")
    assert parts[0] == "" and parts[-1] == ""
    return parts[1:-1]


# ----------------------------------------------------------------------------------------------- worker

def dev_loss(model, dev_windows, device, autocast):
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        total, count = 0.0, 0
        for i in range(0, dev_windows.shape[0], 64):
            w = dev_windows[i:i + 64]
            logits = logits_of(model, w[:, :-1])
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += w[:, 1:].numel()
    model.train()
    return total / count


def worker(args):
    run = json.loads(args.worker)
    hp = dict(HPARAMS, **(SMOKE if args.smoke else {}))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(SEED)
    train = torch.from_numpy(np.load(os.path.join(args.workdir, "train.npy")).astype(np.int64)).to(device)
    dev = torch.from_numpy(np.load(os.path.join(args.workdir, "dev.npy")).astype(np.int64))
    vocab = int(json.load(open(os.path.join(args.workdir, "vocab.json")))["vocab"])
    seq = hp["seq_len"]
    n_win = (len(dev) - 1) // seq
    dev_windows = torch.stack([dev[i * seq:i * seq + seq + 1] for i in range(n_win)]).to(device)

    config = make_config(hp, vocab)
    model = transformers.MambaForCausalLM(config)
    init_weights(model, SEED)
    model = patch_fast(model).to(device).train()

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.endswith("A_log")]
    decay = [p for p in decay if all(p is not q for q in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=hp["betas"],
                            fused=device.type == "cuda")
    tokens_per_step = hp["batch"] * seq
    steps_per_epoch = len(train) / tokens_per_step
    cap_steps = max(1, int(run["epochs"] * steps_per_epoch))
    eval_every = max(1, int(steps_per_epoch / hp["evals_per_epoch"]))
    gen = torch.Generator(device=device).manual_seed(SEED)
    offsets_range = torch.arange(seq + 1, device=device)

    start = time.time()
    budget = args.deadline - start
    curve = []
    best = {"dev_loss": float("inf"), "step": 0}
    best_state = None
    step, progress, running, running_n = 0, 0.0, 0.0, 0
    while progress < 1.0:
        if progress < hp["warmup"]:
            lr = hp["lr"] * max(progress, 1e-3) / hp["warmup"]
        else:
            q = (progress - hp["warmup"]) / (1 - hp["warmup"])
            lr = hp["lr"] * (hp["min_lr_ratio"] + (1 - hp["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * q)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - seq - 1, (hp["batch"],), device=device, generator=gen)
        w = train[starts[:, None] + offsets_range]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = logits_of(model, w[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp["clip"])
        opt.step()
        step += 1
        running += loss.item()
        running_n += 1
        elapsed = time.time() - start
        progress = max(elapsed / budget, step / cap_steps)
        if step % eval_every == 0 or progress >= 1.0:
            dl = dev_loss(model, dev_windows, device, autocast=True)
            train_loss = running / running_n
            running, running_n = 0.0, 0
            entry = {"step": step, "epoch": round(step / steps_per_epoch, 3), "time_s": round(elapsed, 1),
                     "lr": lr, "train_loss": round(train_loss, 4), "dev_loss": round(dl, 4),
                     "grad_norm": round(float(gnorm), 3)}
            curve.append(entry)
            if dl < best["dev_loss"]:
                best = {"dev_loss": dl, "step": step, "epoch": entry["epoch"], "time_s": entry["time_s"]}
                best_state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
            if len(curve) % 8 == 1 or progress >= 1.0:
                log(f"[{run['name']}] step {step} epoch {entry['epoch']:.2f} t {elapsed:.0f}s lr {lr:.2e} "
                    f"train {train_loss:.4f} dev {dl:.4f} (best {best['dev_loss']:.4f} @ {best['step']})")
    summary = dict(run, steps=step, epochs_done=round(step / steps_per_epoch, 3), time_s=round(time.time() - start, 1),
                   steps_per_s=round(step / (time.time() - start), 2), tokens_per_step=tokens_per_step,
                   best=best, final_train_loss=curve[-1]["train_loss"], final_dev_loss=curve[-1]["dev_loss"],
                   curve=curve, hparams={k: v for k, v in hp.items()})
    torch.save(best_state, os.path.join(args.workdir, run["name"] + ".pt"))
    with open(os.path.join(args.workdir, run["name"] + ".json"), "w") as f:
        json.dump(summary, f)
    return 0


# ----------------------------------------------------------------------------------------------- export

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def save_safetensors(tensors, path, metadata):
    """safetensors, byte-for-byte reproducible: metadata, then the tensors sorted by name (as in
    scripts/make_lm_fixtures.py)."""
    assert sys.byteorder == "little"
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        blob = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes(order="C")
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
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t.cpu()), name
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata


def reference_model(config, stored, device="cpu"):
    """An fp32 MambaForCausalLM holding the stored weights widened to fp32 (transformers' own forward)."""
    model = transformers.MambaForCausalLM(config).to(dtype=torch.float32)
    result = model.load_state_dict({k: v.float() for k, v in stored.items()}, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
    with torch.no_grad():
        if model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr():
            model.lm_head.weight.copy_(model.backbone.embeddings.weight)
    for k, v in stored.items():
        assert torch.equal(model.state_dict()[k], v.float()), k
    return model.to(device).eval()


def top2(logits):
    lp = torch.log_softmax(logits.double(), dim=-1)
    top = torch.topk(lp, 2, dim=-1)
    arg = torch.argmax(logits, dim=-1)
    assert torch.equal(arg, top.indices[:, 0])
    return lp, arg.tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


@torch.no_grad()
def make_case(model, ids):
    logits = logits_of(model, torch.tensor([ids]))[0]
    lp, arg, gaps = top2(logits)
    nxt = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    return {"ids": list(ids), "next_token_logprob": nxt, "argmax": arg, "sum_logprob": float(sum(nxt)),
            "min_top2_gap": float(min(gaps))}


@torch.no_grad()
def greedy(model, prompt, steps, device="cpu", stop_at_eot=False):
    seq, gaps = list(prompt), []
    for _ in range(steps):
        _, arg, gap = top2(logits_of(model, torch.tensor([seq], device=device))[0, -1:].float().cpu())
        seq.append(arg[0])
        gaps.append(gap[0])
        if stop_at_eot and arg[0] == EOT_ID:
            break
    return seq[len(prompt):], gaps


@torch.no_grad()
def sample(model, prompt, steps, temperature, gen, device):
    seq = list(prompt)
    for _ in range(steps):
        logits = logits_of(model, torch.tensor([seq], device=device))[0, -1].float().cpu()
        probs = torch.softmax(logits / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        seq.append(nxt)
        if nxt == EOT_ID:
            break
    return seq[len(prompt):]


@torch.no_grad()
def stream_nll(model, ids, device):
    """Sum of -log p(ids[i+1] | ids[..i]) over the whole sequence in one pass from a fresh state, fp32."""
    x = torch.tensor(ids, dtype=torch.long, device=device)[None]
    logits = logits_of(model, x[:, :-1])[0].float()
    lp = torch.log_softmax(logits.double(), dim=-1)
    return -float(lp.gather(1, x[0, 1:, None]).sum()), lp


@torch.no_grad()
def per_doc_nll(model, tok, docs, device):
    """Each fortune from a fresh state: [EOT] + fortune + [EOT], predicting all but the first token."""
    seqs = [[EOT_ID] + tok.encode(d, add_special_tokens=False).ids + [EOT_ID] for d in docs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total, count = 0.0, 0
    i = 0
    while i < len(order):
        group = [seqs[j] for j in order[i:i + 64]]
        i += 64
        width = max(len(s) for s in group)
        x = torch.full((len(group), width), 1, dtype=torch.long)
        mask = torch.zeros((len(group), width - 1), dtype=torch.bool)
        for r, s in enumerate(group):
            x[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s) - 1] = True
        x = x.to(device)
        logits = logits_of(model, x[:, :-1]).float()
        lp = torch.log_softmax(logits.double(), dim=-1).gather(2, x[:, 1:, None])[..., 0].cpu()
        total += -float(lp[mask].sum())
        count += int(mask.sum())
    return total, count


def export(args, tok, vocab, summaries, texts, hp):
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    chosen = min(summaries, key=lambda s: s["best"]["dev_loss"])
    log(f"chosen run: {chosen['name']} (best dev loss {chosen['best']['dev_loss']:.4f} at step "
        f"{chosen['best']['step']}, epoch {chosen['best']['epoch']})")
    state = torch.load(os.path.join(args.workdir, chosen["name"] + ".pt"), weights_only=True)
    config = make_config(hp, vocab)
    fp32 = transformers.MambaForCausalLM(config)
    missing = fp32.load_state_dict(state, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    stored = {k: v.to(torch.float16).contiguous() for k, v in state.items() if k != "lm_head.weight"}
    for k, v in state.items():
        assert v.abs().max().item() < 6e4, k
        assert torch.isfinite(stored.get(k, torch.zeros(1))).all(), k
    os.makedirs(args.out, exist_ok=True)

    # config.json as save_pretrained writes it (from the float16 model); our own tensor file.
    half = copy.deepcopy(fp32).to(torch.float16)
    with tempfile.TemporaryDirectory() as tmp:
        half.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
            config_text = f.read()
        theirs = load_file(os.path.join(tmp, "model.safetensors"))
        same = set(theirs) == set(stored) and all(torch.equal(theirs[k], stored[k]) for k in stored)
        log(f"save_pretrained stores the same tensors as model.safetensors: {same}"
            + ("" if same else f" (its keys: {sorted(theirs)})"))
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(config_text)
    save_safetensors(stored, os.path.join(args.out, "model.safetensors"), {"format": "pt"})
    n_params = sum(v.numel() for v in stored.values())
    log(f"wrote {args.out}/model.safetensors: {os.path.getsize(os.path.join(args.out, 'model.safetensors'))} bytes, "
        f"{n_params} parameters (float16)")

    loaded = transformers.MambaForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    ref = reference_model(config, stored)  # CPU, transformers' forward
    fast = patch_fast(reference_model(config, stored, device))
    probe = [int(i) for i in texts["valid_ids"][:400]]
    with torch.no_grad():
        a = logits_of(ref, torch.tensor([probe]))[0]
        b = logits_of(loaded, torch.tensor([probe]))[0]
        c = logits_of(fast, torch.tensor([probe], device=device))[0].float().cpu()
    log(f"from_pretrained vs reference: max |dlogit| {(a - b).abs().max().item():.3e}; "
        f"parallel-scan model on {device} vs reference: {(a - c).abs().max().item():.3e}")
    assert (a - b).abs().max().item() <= 1e-6
    assert (a - c).abs().max().item() < 2e-3

    evaluation = {"dtype_stored": "float16", "parameters": n_params}
    for name in ("valid", "dev"):
        ids = [int(i) for i in texts[name + "_ids"]]
        docs = documents(texts[name + "_text"])
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        nll, _ = stream_nll(fast, ids, device)
        n = len(ids) - 1
        doc_nll, doc_n = per_doc_nll(fast, tok, docs, device)
        assert doc_n == n, (doc_n, n)
        evaluation[name] = {
            "fortunes": len(docs), "tokens": len(ids), "predicted_tokens": n, "text_bytes": nbytes,
            "stream": {"nll_per_token": nll / n, "perplexity_per_token": math.exp(nll / n),
                       "bits_per_byte": nll / nbytes / math.log(2), "perplexity_per_byte": math.exp(nll / nbytes),
                       "sum_logprob": -nll},
            "per_fortune": {"nll_per_token": doc_nll / n, "perplexity_per_token": math.exp(doc_nll / n),
                            "bits_per_byte": doc_nll / nbytes / math.log(2),
                            "perplexity_per_byte": math.exp(doc_nll / nbytes)}}
        s = evaluation[name]["stream"]
        log(f"{name}.txt ({len(docs)} fortunes, {n} predicted tokens, {nbytes} bytes): perplexity "
            f"{s['perplexity_per_token']:.3f} per token ({s['nll_per_token']:.4f} nats), "
            f"{s['bits_per_byte']:.4f} bits per byte (per-byte perplexity {s['perplexity_per_byte']:.4f}); "
            f"per fortune from a fresh state: {evaluation[name]['per_fortune']['perplexity_per_token']:.3f}")
    train_ids = [int(i) for i in texts["train_ids"][:65536]]
    nll, _ = stream_nll(fast, train_ids, device)
    evaluation["train_first_65536_tokens"] = {"nll_per_token": nll / (len(train_ids) - 1),
                                              "perplexity_per_token": math.exp(nll / (len(train_ids) - 1))}
    log(f"train.txt (first 65536 tokens, fp32): perplexity {math.exp(nll / (len(train_ids) - 1)):.3f}")

    # expected.json: transformers' MambaForCausalLM, fp32, CPU.
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    cases = []
    for d in documents(texts["valid_text"]):
        ids = [EOT_ID] + tok.encode(d, add_special_tokens=False).ids
        if not CASE_TOKENS[0] <= len(ids) <= CASE_TOKENS[1]:
            continue
        case = make_case(ref, ids)
        if case["min_top2_gap"] < MIN_GAP:
            continue
        cases.append(dict({"text": "<|endoftext|>" + d}, **case))
        if len(cases) == 3:
            break
    greedy_out = []
    for p in PROMPTS:
        prompt = [EOT_ID] + tok.encode(p, add_special_tokens=False).ids
        cont, gaps = greedy(ref, prompt, GREEDY_STEPS)
        greedy_out.append({"prompt_text": p, "prompt": prompt, "continuation": cont,
                           "continuation_text": tok.decode(cont, skip_special_tokens=False),
                           "top2_gaps": gaps, "min_top2_gap": float(min(gaps))})
        log(f"greedy {p!r} -> {tok.decode(cont, skip_special_tokens=False)!r} (min gap {min(gaps):.4f})")
    v = evaluation["valid"]
    expected = {"cases": cases, "greedy": greedy_out,
                "valid_stream": {"file": "data/fortunes/valid.txt", "tokens": v["tokens"],
                                 "sum_logprob": v["stream"]["sum_logprob"],
                                 "perplexity": v["stream"]["perplexity_per_token"]},
                "notes": "fp32 from the stored float16 weights; log_softmax in float64 over all 4096 ids; "
                         "greedy by full forward passes, no EOS stopping; valid_stream from the parallel-scan "
                         "forward in fp32 on the GPU (one pass over the whole file)"}
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(expected, indent=1, ensure_ascii=False))
    for c in cases:
        log(f"case {c['text']!r}: {len(c['ids'])} ids, sum_logprob {c['sum_logprob']:.4f}, "
            f"min gap {c['min_top2_gap']:.4f}")

    # Samples for the documentation.
    lines = []
    for p in SAMPLE_PROMPTS:
        prompt = [EOT_ID] + tok.encode(p, add_special_tokens=False).ids
        cont, _ = greedy(fast, prompt, 64, device=device, stop_at_eot=True)
        lines.append(f"=== greedy: {p!r}\n{p}{tok.decode(cont, skip_special_tokens=False)}\n")
    gen = torch.Generator().manual_seed(SEED)
    for t in (0.7, 0.9):
        for p in ["", "The", "Q:"]:
            prompt = [EOT_ID] + (tok.encode(p, add_special_tokens=False).ids if p else [])
            cont = sample(fast, prompt, 120, t, gen, device)
            lines.append(f"=== temperature {t}, seed {SEED} (sequential draws): {p!r}\n"
                         f"{p}{tok.decode(cont, skip_special_tokens=False)}\n")
    os.makedirs(args.report, exist_ok=True)
    with open(os.path.join(args.report, "samples.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines))
    log("\n".join(lines))
    return chosen, evaluation, n_params


# ----------------------------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/fortunes")
    parser.add_argument("--tokenizer", default="models/fortunes-mamba/tokenizer.json")
    parser.add_argument("--out", default="models/fortunes-mamba")
    parser.add_argument("--report", default=None, help="folder of training.json, samples.txt, run.log (--out)")
    parser.add_argument("--budget", type=float, default=230.0, help="seconds of training (wall clock)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", default=RUNS,
                        help="runs trained side by side, NAME:EPOCHS,... (EPOCHS caps a run's schedule; the "
                             "budget caps it too)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, for testing the script")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.report = args.report or args.out
    os.makedirs(args.report, exist_ok=True)
    logf = open(os.path.join(args.report, "run.log"), "w", encoding="utf-8")
    global log

    def log(*a):  # noqa: F811
        text = " ".join(str(x) for x in a)
        print(text, flush=True)
        logf.write(text + "\n")
        logf.flush()

    t0 = time.time()
    hp = dict(HPARAMS, **(SMOKE if args.smoke else {}))
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}, "
        f"device {dev_name}, {os.cpu_count()} CPUs")
    tok = Tokenizer.from_file(args.tokenizer)
    vocab = tok.get_vocab_size()
    assert vocab % 8 == 0, vocab
    texts = {}
    workdir = args.workdir = tempfile.mkdtemp(prefix="fortunes-")
    for name in ("train", "dev", "valid"):
        ids, text = tokenize(tok, os.path.join(args.data, name + ".txt"))
        texts[name + "_ids"], texts[name + "_text"] = ids, text
        np.save(os.path.join(workdir, name + ".npy"), ids)
        log(f"{name}.txt: {len(ids)} tokens")
    with open(os.path.join(workdir, "vocab.json"), "w") as f:
        json.dump({"vocab": vocab}, f)

    # The parallel-scan forward against transformers' forward (fp64 model; both scans run in fp32), the
    # scan's backward by gradcheck in fp64; on the CPU.
    torch.manual_seed(0)
    tiny = make_config(dict(d_model=16, n_layer=2), 64)
    ref = transformers.MambaForCausalLM(tiny).double().eval()
    init_weights(ref, 0)
    fast = patch_fast(copy.deepcopy(ref))
    x = torch.randint(0, 64, (2, 37))
    with torch.no_grad():
        err = (logits_of(ref, x) - logits_of(fast, x)).abs().max().item()
    a = torch.rand(2, 9, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 9, 3, 2, dtype=torch.float64, requires_grad=True)
    ok = torch.autograd.gradcheck(LinearScan.apply, (a, b))
    log(f"parallel scan vs transformers (fp64): max |dlogit| {err:.2e}; gradcheck {ok}")
    assert err < 1e-5 and ok  # both forwards compute the scan in float32

    deadline = time.time() + args.budget
    runs = [{"name": r.split(":")[0], "epochs": float(r.split(":")[1])} for r in args.runs.split(",")]
    procs = []
    for run in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(run), "--workdir", workdir,
               "--deadline", str(deadline), "--device", args.device] + (["--smoke"] if args.smoke else [])
        procs.append((run, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    summaries = []
    for run, p in procs:
        try:
            out, _ = p.communicate(timeout=max(60.0, deadline - time.time() + 120.0))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        for line in out.splitlines():
            log(line)
        path = os.path.join(workdir, run["name"] + ".json")
        if p.returncode == 0 and os.path.exists(path):
            with open(path) as f:
                summaries.append(json.load(f))
        else:
            log(f"run {run['name']} failed (exit {p.returncode})")
    assert summaries, "no run finished"
    for s in summaries:
        log(f"run {s['name']}: {s['steps']} steps ({s['epochs_done']} epochs, {s['steps_per_s']} steps/s), "
            f"final train {s['final_train_loss']:.4f}, final dev {s['final_dev_loss']:.4f}, best dev "
            f"{s['best']['dev_loss']:.4f} at step {s['best']['step']} (epoch {s['best']['epoch']})")
    train_time = time.time() - t0

    chosen, evaluation, n_params = export(args, tok, vocab, summaries, texts, hp)
    report = {"chosen": chosen["name"], "parameters": n_params, "device": dev_name,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "seconds_to_end_of_training": round(train_time, 1), "seconds_total": round(time.time() - t0, 1),
              "evaluation": evaluation, "runs": summaries}
    with open(os.path.join(args.report, "training.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(report, indent=1))
    log(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
