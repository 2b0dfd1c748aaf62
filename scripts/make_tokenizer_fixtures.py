#!/usr/bin/env python3
"""Make the fixtures of ssm::text::tokenizer (tests/fixtures/tokenizer/) with HuggingFace tokenizers.

Trains a small byte-level BPE tokenizer of the shape of GPT-NeoX's (EleutherAI/gpt-neox-20b, the
tokenizer of the state-spaces/mamba models): NFC normalizer, ByteLevel pre-tokenizer, post-processor
and decoder without prefix space, special tokens <|endoftext|> (id 0) and <|padding|> (id 1), and
non-special added tokens for runs of 2..24 spaces (normalized, matched before BPE). The training
text is the English of Debian's license texts and a few lines of many scripts written below.

Writes:
  tokenizer.json        the tokenizer, saved as GPT-NeoX's file is (merges as "a b" strings, no
                        use_regex key);
  tokenizer_flags.json  the same model with added tokens that use lstrip, rstrip, single_word and
                        normalized = false, and a special token that is not in the vocabulary;
  cases.json            for each of the two, the ids tokenizers encodes tricky strings to (with
                        special tokens matched, and with them encoded as text), and the strings it
                        decodes id sequences to (with and without skip_special_tokens).

    pip install tokenizers==0.22.1
    python3 scripts/make_tokenizer_fixtures.py [--out tests/fixtures/tokenizer]
"""

import argparse
import json
import os
import random

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LICENSES = ["GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "Artistic"]

MULTILINGUAL = """\
Le café était déjà plein à côté de l'église ; où est la rue Émile-Zola ? Ça coûte 12,50 € !
Über die Brücke gehen Größe, Straße, schön und Fräulein. Die Bäckerei öffnet um 7 Uhr.
El niño comió piña en el año 2024; ¿dónde está la estación? ¡Qué mañana tan bonita!
Tiếng Việt có nhiều dấu: người, được, những, trường, nước, Hà Nội.
Ελληνικά: καλημέρα, ευχαριστώ, Αθήνα, φιλοσοφία και μαθηματικά.
Русский язык: привет, спасибо, Москва, хорошо, до свидания.
日本語のテキスト：東京は日本の首都です。ひらがな、カタカナ、漢字。
中文文本：北京是中国的首都。我们学习自然语言处理。
한국어 텍스트: 서울은 대한민국의 수도입니다. 감사합니다.
العربية: مرحبا بالعالم، شكرا جزيلا.
हिन्दी: नमस्ते दुनिया, धन्यवाद।
ไทย: สวัสดีครับ ขอบคุณมาก
Emoji: 😀 😂 👍🏽 👩‍👩‍👧‍👦 🇫🇷 🇯🇵 ❤️ 🎉 🚀 ✨ 🙏🏻 👨‍💻
Numbers: 0 1 2 3 42 1999 2024 3.14159 1,000,000 ½ ² ³ Ⅻ ٣ ४
Code: def f(x): return x**2  # comment
    if (a != b && c <= d) { return -1; }
\tindented\twith\ttabs
She's, it's, don't, we're, they've, I'm, you'll, he'd. SHE'S DON'T WE'RE I'M YOU'LL HE'D
"""


def training_text():
    """The English of some license texts, then the lines above, repeated for weight."""
    parts = []
    for name in LICENSES:
        path = os.path.join("/usr/share/common-licenses", name)
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
    parts.extend([MULTILINGUAL] * 20)
    return parts


def make_tokenizer():
    """A byte-level BPE of the shape of GPT-NeoX's, trained on training_text()."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken("<|endoftext|>", special=True, normalized=False),
                        AddedToken("<|padding|>", special=True, normalized=False)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    # GPT-NeoX's runs of spaces: non-special, normalized, after the model's vocabulary.
    tok.add_tokens([AddedToken(" " * n, single_word=False, lstrip=False, rstrip=False, normalized=True, special=False)
                    for n in range(24, 1, -1)])
    return tok


def as_neox_file(tok):
    """The JSON of `tok` laid out as GPT-NeoX's tokenizer.json is: legacy merges, no use_regex."""
    data = json.loads(tok.to_str())
    data["model"]["merges"] = [" ".join(pair) if isinstance(pair, list) else pair for pair in data["model"]["merges"]]
    data["pre_tokenizer"].pop("use_regex", None)
    data["decoder"].pop("use_regex", None)
    data["post_processor"].pop("use_regex", None)
    return data


def with_flag_tokens(data):
    """A copy of `data` with added tokens that exercise lstrip, rstrip, single_word, normalized."""
    data = json.loads(json.dumps(data))
    size = max(max(data["model"]["vocab"].values()), max(t["id"] for t in data["added_tokens"])) + 1
    extra = [
        ("<mask>", dict(special=True, lstrip=True, rstrip=False, single_word=False, normalized=False)),
        ("<sep>", dict(special=True, lstrip=False, rstrip=True, single_word=False, normalized=False)),
        ("[both]", dict(special=True, lstrip=True, rstrip=True, single_word=False, normalized=False)),
        ("word", dict(special=False, lstrip=False, rstrip=False, single_word=True, normalized=True)),
        ("raw\u00e9", dict(special=False, lstrip=False, rstrip=False, single_word=False, normalized=False)),
        ("Ω-mark", dict(special=False, lstrip=False, rstrip=False, single_word=True, normalized=True)),
        ("<|endoftext|>x", dict(special=True, lstrip=False, rstrip=False, single_word=False, normalized=False)),
    ]
    for i, (content, flags) in enumerate(extra):
        entry = {"id": size + i, "content": content}
        entry.update({k: flags[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special")})
        data["added_tokens"].append(entry)
    data["model"]["merges"] = [pair.split(" ") for pair in data["model"]["merges"]]  # the modern form
    data["pre_tokenizer"]["use_regex"] = True
    return data


def tricky_strings(extra=()):
    """About a hundred strings that probe every corner of the pipeline."""
    s = [
        "", " ", "Hello world", "Hello, world!", " Hello", "Hello ", "  Hello  ", "hello\tworld", "\t\tindent",
        "line one\nline two", "windows\r\nline\r\n", "\n\n\n", "\r", "trailing newline\n", " \n \n ",
        "caf\u00e9", "cafe\u0301", "Cafe\u0301 cre\u0300me bru\u0302le\u0301e", "\u0041\u030a", "\u212b",
        "e\u0301\u0301\u0323", "\u1e0b\u0323", "q\u0307\u0323", "\u0301 leading combining mark", "a\u0308\u0304",
        "\u1100\u1161\u11a8", "\u00c5ngstr\u00f6m \u212bngstr\u00f6m", "\ufb01 ligature", "x\u200by zero width space",
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\u4e2d\u6587 mixed with English", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
        "\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family",
        "\U0001F468\u200d\U0001F4BB coding", "\U0001F1EB\U0001F1F7\U0001F1EF\U0001F1F5 flags", "\u2764\ufe0f heart",
        "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F9D1\U0001F3FF\u200d\U0001F91d\u200d\U0001F9D1\U0001F3FB",
        "She's here", "SHE'S HERE", "it's", "IT'S", "don't", "DON'T", "we're", "WE'RE", "they've", "THEY'VE",
        "I'm", "I'M", "you'll", "YOU'LL", "he'd", "HE'D", "'s 't 're 've 'm 'll 'd", "o'clock", "rock 'n' roll",
        "12345", "3.14159", "1,000,000", "x1y2z3", "\u00bd \u00b2 \u2167 \u0663\u0664 \u096a", "2024-01-01T12:00:00Z",
        "!!!", "...", "?!?!", "a--b", "(a[b]{c})", "#$%&*+", "foo...bar", "\u00bfQu\u00e9?", "\u00ab guillemets \u00bb",
        "def f(x):\n    return x ** 2\n", "if (a != b && c <= d) { return -1; }",
        "<|endoftext|>", "Hello<|endoftext|>world", "Hello <|endoftext|> world", "<|endoftext|><|endoftext|>",
        "a<|padding|>b", "mid<|endoftext|>dle of a word", "\u00e9<|endoftext|>\u0301",
        "<|endoftext|", "|endoftext|>", "<|endoftext |>", "<|ENDOFTEXT|>", "<| endoftext|>", "<<|endoftext|>>",
        "<|endoftext|>x", "<|padding|><|endoftext|>  <|padding|>",
        "\u00a0non-breaking\u00a0space", "ideographic\u3000space", "next\u0085line", "line\u2028separator",
        "mongolian\u180evowel", "\u200d", "\ufeffBOM", "\ufffd replacement", "\x00nul\x01ctrl\x7f",
    ]
    s += [" " * n for n in range(1, 31)]
    s += ["a" + " " * n + "b" for n in range(1, 31)]
    s += [" " * n + "x" + " " * n for n in (2, 3, 5, 8, 13, 24, 25, 26)]
    s += ["\t" * 3 + " " * 4 + "\n" * 2 + " " * 5 + "y", " \t \t  \n   z"]
    s += list(extra)
    return s


def decode_sequences(tok, rng):
    """Id sequences to decode: whole encodings, their prefixes (cut inside UTF-8 sequences), random ids."""
    seqs = []
    for text in ["caf\u00e9 \U0001F469\u200d\U0001F469\u200d\U0001F467 \u65e5\u672c", "a<|endoftext|>b<|padding|>c",
                 "x" + " " * 7 + "y", "\u00e9\u00e8\u00ea \u4e2d\u6587 \U0001F44D\U0001F3FD"]:
        ids = tok.encode(text).ids
        seqs.append(ids)
        for cut in range(1, len(ids)):
            seqs.append(ids[:cut])
    size = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(40):
        seqs.append([rng.randrange(size) for _ in range(rng.randrange(1, 12))])
    seqs.append([])
    return seqs


def cases_for(tok, strings, rng):
    encode = []
    for text in strings:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = False
        encode.append({"text": text, "ids": ids, "ids_special_as_text": ids_plain,
                       "decoded": tok.decode(ids, skip_special_tokens=False),
                       "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    decode = []
    for ids in decode_sequences(tok, rng):
        decode.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                       "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "encode": encode, "decode": decode}


def malformed_corpus(out):
    """Tokenizer files malformed or unsupported in one way each, for the refusals of the loader."""
    base = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 4, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "<|endoftext|>": 4}, "merges": ["a b"]},
    }

    def variant(change):
        data = json.loads(json.dumps(base))
        change(data)
        return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")

    def set_path(*path_and_value):
        *path, value = path_and_value

        def change(data):
            for key in path[:-1]:
                data = data[key]
            if value is DELETE:
                del data[path[-1]]
            else:
                data[path[-1]] = value
        return change

    good = variant(lambda d: None)
    files = {
        "valid.json": good,
        "not_json.json": b'{"version": "1.0", "model": {',
        "truncated.json": good[: len(good) // 2],
        "top_level_array.json": b"[1, 2, 3]\n",
        "bad_utf8_in_vocab.json": good.replace(b'"ab"', b'"a\xff"'),
        "lone_surrogate_in_vocab.json": good.replace(b'"ab"', b'"a\\ud800"'),
        "unknown_version.json": variant(set_path("version", "2.0")),
        "missing_model.json": variant(set_path("model", DELETE)),
        "model_unigram.json": variant(set_path("model", "type", "Unigram")),
        "model_without_type.json": variant(set_path("model", "type", DELETE)),
        "missing_vocab.json": variant(set_path("model", "vocab", DELETE)),
        "missing_merges.json": variant(set_path("model", "merges", DELETE)),
        "vocab_id_not_integer.json": variant(set_path("model", "vocab", "b", "1")),
        "vocab_duplicate_id.json": variant(set_path("model", "vocab", "b", 0)),
        "vocab_id_out_of_range.json": variant(set_path("model", "vocab", "ab", 99)),
        "merge_unknown_token.json": variant(set_path("model", "merges", ["a zz"])),
        "merge_result_not_in_vocab.json": variant(set_path("model", "merges", ["b a"])),
        "merge_three_parts.json": variant(set_path("model", "merges", ["a b c"])),
        "merges_mixed_forms.json": variant(set_path("model", "merges", ["a b", ["a", "b"]])),
        "dropout.json": variant(set_path("model", "dropout", 0.1)),
        "byte_fallback.json": variant(set_path("model", "byte_fallback", True)),
        "unk_not_in_vocab.json": variant(set_path("model", "unk_token", "<unk>")),
        "normalizer_lowercase.json": variant(set_path("normalizer", {"type": "Lowercase"})),
        "missing_pre_tokenizer.json": variant(set_path("pre_tokenizer", DELETE)),
        "pre_tokenizer_whitespace.json": variant(set_path("pre_tokenizer", {"type": "Whitespace"})),
        "pre_tokenizer_without_prefix_option.json": variant(set_path("pre_tokenizer", "add_prefix_space", DELETE)),
        "decoder_wordpiece.json": variant(set_path("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True})),
        "post_processor_template.json": variant(set_path("post_processor", {"type": "TemplateProcessing"})),
        "added_token_wrong_id.json": variant(set_path("added_tokens", 0, "id", 7)),
        "added_token_without_content.json": variant(set_path("added_tokens", 0, "content", DELETE)),
        "added_token_twice.json": variant(lambda d: d["added_tokens"].append(dict(d["added_tokens"][0]))),
        "added_token_flag_not_bool.json": variant(set_path("added_tokens", 0, "lstrip", "yes")),
        "added_token_new_id_gap.json": variant(lambda d: d["added_tokens"].append(
            {"id": 9, "content": "<new>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True})),
    }
    folder = os.path.join(out, "malformed")
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return len(files) - 1


DELETE = object()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(20240607)

    neox = as_neox_file(make_tokenizer())
    neox["decoder"]["add_prefix_space"] = False  # as GPT-NeoX's file (decoders.ByteLevel() takes no options)
    flags = with_flag_tokens(neox)
    files = {"tokenizer.json": neox, "tokenizer_flags.json": flags}
    flag_strings = [
        "a <mask> b", "a   <mask>", "<mask>", "x<mask>y", " \t<mask>\n", "a <sep>   b", "<sep>\n\nnext", "[both]",
        "  [both]  end", "a<mask><sep>b", "<sep> <mask>", "word", "a word here", "words", "sword", "word_", "_word",
        "word.", "(word)", "w\u00f6rd word\u00e9 \u00e9word", "raw\u00e9", "rawe\u0301", "xraw\u00e9y", "\u03a9-mark",
        "\u2126-mark", "a\u03a9-mark", "\u03a9-mark1", "\u03a9-mark \u03a9-mark", "<|endoftext|>x", "<|endoftext|>xy",
        "<|endoftext|>", "a  <mask>   <sep>   b", "word  word", "\u00a0<mask>\u3000", "<sep>\u2028x",
    ]
    cases = {"tokenizers_version": tokenizers.__version__}
    for name, data in files.items():
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            f.write(text)
        tok = Tokenizer.from_str(text)
        cases[name] = cases_for(tok, tricky_strings(flag_strings if name == "tokenizer_flags.json" else ()), rng)
    with open(os.path.join(args.out, "cases.json"), "w", encoding="ascii") as f:
        json.dump(cases, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"{malformed_corpus(args.out)} malformed files in {os.path.join(args.out, 'malformed')}")
    for name in list(files) + ["cases.json"]:
        path = os.path.join(args.out, name)
        print(f"{path}: {os.path.getsize(path)} bytes")
    print(f"{len(cases['tokenizer.json']['encode'])} + {len(cases['tokenizer_flags.json']['encode'])} encode cases, "
          f"{len(cases['tokenizer.json']['decode'])} + {len(cases['tokenizer_flags.json']['decode'])} decode cases")


if __name__ == "__main__":
    main()
