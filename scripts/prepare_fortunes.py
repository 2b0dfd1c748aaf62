#!/usr/bin/env python3
"""Prepare the corpus and the tokenizer of the small trained model `models/fortunes-mamba/`.

The text is Debian's `fortunes` and `fortunes-min` packages (the non-offensive fortune files in
/usr/share/games/fortunes/; the .dat/.u8 index files and the offensive off/ directory are skipped):

* every fortune is cleaned (terminal overstrike such as "_\\bX" resolved to the character that shows,
  bells and carriage returns dropped, trailing blanks of each line and blank lines at either end removed,
  Unicode NFC), exact duplicates are dropped (the first in file order is kept);
* each fortune is assigned by the SHA-256 of its text to `valid` (5 %, held out for evaluation only), `dev`
  (2.5 %, held out too; the training script selects its checkpoint on it) or `train` (the rest);
* each split is written as data/fortunes/<split>.txt: every fortune followed by a newline, each one preceded
  by the end-of-text token and the file closed by one, i.e.
  "<|endoftext|>first fortune\\n<|endoftext|>second fortune\\n ... <|endoftext|>".
  Tokenized with the tokenizer below, a file is exactly the token stream the model sees: id 0, the ids of a
  fortune, id 0, ... (checked here).

The tokenizer is a byte-level BPE of the same shape as GPT-NeoX-20B's tokenizer.json, trained with the
`tokenizers` library on the fortunes of train.txt only:

* normalizer NFC; pre-tokenizer ByteLevel(add_prefix_space=False, use_regex=True); decoder and
  post-processor ByteLevel; model BPE (no unk token, no dropout, no byte fallback);
* special tokens <|endoftext|> (id 0) and <|padding|> (id 1), in the BPE vocabulary too;
* like NeoX, added (non-special, normalized) tokens for runs of 24 down to 2 spaces, the last ids
  (NeoX: 50254 = 24 spaces ... 50276 = 2 spaces; here VOCAB-23 ... VOCAB-1), also listed in the model's
  vocabulary under the same ids with their literal-space text, as NeoX's file has them. Space runs are
  split out before BPE at encoding time, so the BPE merges are learned on the text between them;
* VOCAB = 4096 ids in all.

Needs Python 3 with `tokenizers` (0.22). From the repo root, after
`apt-get install -y fortunes fortunes-min`:

    python3 scripts/prepare_fortunes.py

It writes data/fortunes/{train,dev,valid}.txt, data/fortunes/copyright (Debian's copyright file of the
package, verbatim) and models/fortunes-mamba/tokenizer.json; running it twice writes identical files.
data/fortunes/README.md is written by hand (it quotes the counts this script prints).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

EOT = "<|endoftext|>"
PAD = "<|padding|>"
VOCAB = 4096
SPACE_RUNS = list(range(24, 1, -1))  # NeoX's order: the longest run first (lowest id)
VALID_PER_MILLE = 50
DEV_PER_MILLE = 25
SKIP = {"off"}


def overstrike(line):
    """The characters a terminal shows for `line`: backspace moves left, a character overwrites the cell,
    except that an underscore does not overwrite a visible character (underlining)."""
    if "\b" not in line:
        return line
    cells = []
    pos = 0
    for c in line:
        if c == "\b":
            pos = max(0, pos - 1)
            continue
        if pos < len(cells):
            if c != "_" or cells[pos] in (" ", "_"):
                cells[pos] = c
        else:
            cells.append(c)
        pos += 1
    return "".join(cells)


def clean(text):
    text = text.replace("\r", "").replace("\a", "")
    lines = [overstrike(line).rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    text = unicodedata.normalize("NFC", "\n".join(lines))
    bad = sorted({c for c in text if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127})
    assert not bad, (bad, text[:80])
    return text


def read_fortunes(src):
    names = sorted(n for n in os.listdir(src)
                   if os.path.isfile(os.path.join(src, n)) and not n.endswith((".dat", ".u8")) and n not in SKIP)
    out = []
    for name in names:
        with open(os.path.join(src, name), "rb") as f:
            text = f.read().decode("utf-8")
        # A fortune ends at a line holding only '%'.
        for chunk in re.split(r"^%[ \t]*$", text, flags=re.M):
            doc = clean(chunk)
            if doc:
                out.append((name, doc))
    return names, out


def split_of(doc):
    h = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") % 1000
    if h < VALID_PER_MILLE:
        return "valid"
    if h < VALID_PER_MILLE + DEV_PER_MILLE:
        return "dev"
    return "train"


def corpus_text(docs):
    return "".join(EOT + d + "\n" for d in docs) + EOT


def make_tokenizer(train_docs):
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(SPACE_RUNS), min_frequency=2, show_progress=False,
                                  special_tokens=[EOT, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    # At encoding time the space-run tokens are split out before the BPE: learn the merges on what is left.
    def pieces():
        for d in train_docs:
            for piece in re.split(r" {2,}", d + "\n"):
                if piece:
                    yield piece
    tok.train_from_iterator(pieces(), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB - len(SPACE_RUNS), tok.get_vocab_size()
    assert tok.token_to_id(EOT) == 0 and tok.token_to_id(PAD) == 1
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False),
                            AddedToken(PAD, special=True, normalized=False)])
    tok.add_tokens([AddedToken(" " * n, special=False, normalized=True) for n in SPACE_RUNS])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()

    obj = json.loads(tok.to_str())
    # decoders.ByteLevel() takes no arguments and writes add_prefix_space true; NeoX's says false (decoding
    # does not read it).
    obj["decoder"]["add_prefix_space"] = False
    # NeoX's file lists the space-run tokens in the BPE vocabulary too, under their added ids.
    vocab = obj["model"]["vocab"]
    for entry in obj["added_tokens"]:
        if entry["content"] in vocab:
            assert vocab[entry["content"]] == entry["id"], entry
        else:
            assert entry["id"] == len(vocab), entry
            vocab[entry["content"]] = entry["id"]
    assert sorted(vocab.values()) == list(range(VOCAB))
    return Tokenizer.from_str(json.dumps(obj, ensure_ascii=False))


def check_tokenizer(tok, splits):
    obj = json.loads(tok.to_str())
    assert obj["normalizer"] == {"type": "NFC"}, obj["normalizer"]
    for key in ("pre_tokenizer", "decoder", "post_processor"):
        assert obj[key]["type"] == "ByteLevel" and obj[key]["add_prefix_space"] is False, obj[key]
    assert obj["pre_tokenizer"]["use_regex"] is True
    assert obj["model"]["type"] == "BPE" and len(obj["model"]["vocab"]) == VOCAB
    ids = {e["content"]: e["id"] for e in obj["added_tokens"]}
    assert ids[EOT] == 0 and ids[PAD] == 1
    assert [ids[" " * n] for n in SPACE_RUNS] == list(range(VOCAB - len(SPACE_RUNS), VOCAB))
    assert tok.encode("a" + " " * 5 + "b").ids[1] == ids[" " * 5]
    stats = {}
    for name, docs in splits.items():
        text = corpus_text(docs)
        whole = tok.encode(text, add_special_tokens=False).ids
        per_doc = [0]
        for d in docs:
            enc = tok.encode(d + "\n", add_special_tokens=False).ids
            assert tok.decode(enc, skip_special_tokens=False) == d + "\n", d[:80]
            per_doc += enc + [0]
        assert whole == per_doc, name
        assert per_doc.count(0) == len(docs) + 1, name  # no fortune holds id 0
        nbytes = sum(len((d + "\n").encode("utf-8")) for d in docs)
        stats[name] = dict(fortunes=len(docs), tokens=len(whole), doc_bytes=nbytes,
                           bytes_per_token=nbytes / (len(whole) - len(docs) - 1))
    return stats


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default="/usr/share/games/fortunes")
    parser.add_argument("--data", default="data/fortunes")
    parser.add_argument("--model", default="models/fortunes-mamba")
    args = parser.parse_args()

    names, fortunes = read_fortunes(args.src)
    seen = set()
    splits = {"train": [], "dev": [], "valid": []}
    dupes = 0
    for _, doc in fortunes:
        if doc in seen:
            dupes += 1
            continue
        seen.add(doc)
        splits[split_of(doc)].append(doc)
    print(f"{len(names)} files: {' '.join(names)}")
    print(f"{len(fortunes)} fortunes, {dupes} duplicates dropped; "
          + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    os.makedirs(args.data, exist_ok=True)
    os.makedirs(args.model, exist_ok=True)
    for name, docs in splits.items():
        write(os.path.join(args.data, f"{name}.txt"), corpus_text(docs))
    shutil.copyfile("/usr/share/doc/fortunes/copyright", os.path.join(args.data, "copyright"))

    tok = make_tokenizer(splits["train"])
    tok.save(os.path.join(args.model, "tokenizer.json"), pretty=True)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    stats = check_tokenizer(tok, splits)
    for name, s in stats.items():
        print(f"{name}.txt: {s['fortunes']} fortunes, {s['doc_bytes']} bytes of text, {s['tokens']} tokens "
              f"({s['bytes_per_token']:.3f} bytes per text token)")
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "fortunes"], capture_output=True,
                                 text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        version = "?"
    import tokenizers
    print(f"fortunes {version}, tokenizers {tokenizers.__version__}")
    for name in sorted(os.listdir(args.data)) + ["../../" + args.model + "/tokenizer.json"]:
        path = os.path.normpath(os.path.join(args.data, name))
        with open(path, "rb") as f:
            data = f.read()
        print(f"  {path}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
