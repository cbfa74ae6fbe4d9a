#!/usr/bin/env python3
"""Builds the tokenizer test fixtures under tests/fixtures/tokenizer/ with HF `tokenizers`.

Developer-run, not part of CI:
    python3 -m venv /tmp/venv-tok && /tmp/venv-tok/bin/pip install tokenizers
    /tmp/venv-tok/bin/python engine/tools/make_tokenizer_fixtures.py

Trains small BPE tokenizers locally (no downloads) with the structure of real model files:
  gpt2       ByteLevel(use_regex) pre-tokenizer, merges as "a b" strings, lstrip / non-special
             added tokens
  smollm     the gpt2 vocabulary behind Sequence[Digits(individual), ByteLevel] (SmolLM2 style)
  llama3     Split(Llama-3 pattern) + ByteLevel, ignore_merges, merges as ["a", "b"] pairs
  qwen2      NFC + Split(Qwen2 pattern) + ByteLevel, ChatML specials, ["a", "b"] merges
  spm        Llama-2 style: Prepend/Replace normalizer, byte fallback, "a b" merges
  metaspace  the spm vocabulary behind a Metaspace pre-tokenizer (newer Mistral style)
and writes, per fixture, tokenizer.json, tokenizer_config.json and expected.json: for every
corpus line the ids HF gives with special tokens parsed and as text, and the decoded text.
"""
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

GPT2_PAT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. The dog doesn't care; it's sleeping.
In the beginning there was the tokenizer, and the tokenizer split the text into tokens.
We're going to the market, they've said, and I'll buy apples, oranges and bananas.
def tokenize(text):
    return [token for token in text.split() if token]
for (int i = 0; i < n; i++) { sum += values[i] * weights[i]; }
The year 2024 had 366 days; 1,000,000 people and 3.14159 pies. Call 555-1234 now!
Large language models predict the next token given the previous tokens in the context.
Hello, world! Hello again, world. Goodbye, cruel world... See you tomorrow?
你好，世界。这是一个测试。我们正在测试分词器。中文文本和英文文本混合在一起。
日本語のテキストです。カタカナとひらがなと漢字。
Привет, мир! Это тест токенизатора. Ελληνικά κείμενα. مرحبا بالعالم.
Emoji 😀 are fun 👍 and flags 🇺🇸 and families 👨‍👩‍👧 too.
<html><head><title>Test page</title></head><body><p>Paragraph</p></body></html>
{"key": "value", "list": [1, 2, 3], "nested": {"a": true, "b": null}}
SELECT name, count(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY name;
the the the and and and of of of to to to in in in is is is that that that
"""

CORPUS = [
    "",
    " ",
    "  ",
    "Hello world",
    "Hello, world! How are you doing today?",
    "I'M here, don't you'll we've they're I'd she's HE'S WE'RE THEY'VE YOU'LL I'D",
    "DON'T SHOUT, it's 'quoted' and foo's bar's baz'",
    "'s 'S 'ſ 'ST 'Ll 're",
    "1234567",
    "3.14159 and 1,000,000 and 12 345 and x2y34z567 and 00000000001",
    "Arabic-Indic digits ١٢٣٤٥٦٧ and Roman numeral Ⅻ and ½ ²",
    "a  b   c    d     e",
    "tabs\tand\t\ttabs\t",
    "\n\n\n",
    "line1\nline2\r\nline3\r\rline4",
    "trailing spaces   ",
    "   leading spaces",
    " \n \n  x",
    "x \n\n \t y",
    "\t\n \t",
    "nbsp\u00a0here and\u3000ideographic and\u2003em space",
    "👍🏽 👨‍👩‍👧‍👦 ❤️ 🇺🇸 🏳️‍🌈",
    "emoji😀in😀text😀",
    "你好，世界！这是一个测试。",
    "日本語のテキスト、カタカナ、ひらがな",
    "한국어 텍스트 입니다",
    "e\u0301 vs \u00e9 and A\u030a vs \u212b vs \u00c5",
    "Zalgo: Z\u0351\u0363a\u0367l\u0357g\u0342o\u0308\u0301",
    "\u1100\u1161\u11a8 hangul jamo and \uac01 syllable",
    "ﬁ ligature and ｆｕｌｌｗｉｄｔｈ",
    "def f(x):\n    return x**2  # comment\n",
    "if (a != b && c >= 0) { printf(\"%d\\n\", a); }",
    "<html><body class=\"x\">Hi</body></html>",
    "Привет мир, γειά σου, مرحبا, שלום",
    "!!!???...---",
    "''' \"\"\" ``` ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b <|endoftext|> c",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>",
    "<s>[INST] hi [/INST]</s>",
    "x <mask> y  <mask>z",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<|im_start|<|im_end|>|>",
    "a" * 300,
    "supercalifragilisticexpialidocious" * 6,
    "9" * 50,
    "the quick brown fox jumps over the lazy dog " * 3,
    "Mixed: abc123def ４５６ ٣ x_y-z.w/v\\u",
    "\u2028line separator\u2029para\u0085nel",
    "\u200bzero width\u200d joiner\ufeffbom",
]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def train(tok, vocab_size, specials, alphabet):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    lines = [l for l in TRAIN_TEXT.split("\n") if l] * 3 + CORPUS
    tok.train_from_iterator(lines, trainer)
    return json.loads(tok.to_str())


def added(content, tid, special=True, lstrip=False, rstrip=False, normalized=None):
    return {"id": tid, "content": content, "single_word": False, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": (not special) if normalized is None else normalized,
            "special": special}


def merges_as_strings(j):
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]


def merges_as_pairs(j):
    j["model"]["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in j["model"]["merges"]]


def add_specials(j, names, special=True):
    n = max(j["model"]["vocab"].values()) + 1
    for a in j["added_tokens"]:
        n = max(n, a["id"] + 1)
    for name in names:
        j["added_tokens"].append(added(name, n, special=special))
        n += 1


def emit(outdir, name, j, config):
    tok = Tokenizer.from_str(json.dumps(j))
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, "tokenizer.json"), j)
    if config is not None:
        write_json(os.path.join(d, "tokenizer_config.json"), config)
    cases = []
    for text in CORPUS:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_text = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({"text": text, "ids": ids, "ids_nospecial": ids_text,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    bos = tok.encode("x", add_special_tokens=True).ids
    write_json(os.path.join(d, "expected.json"),
               {"name": name, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
                "with_special_prefix": bos[:-1] if len(bos) > 1 else [], "cases": cases})
    print(name, "vocab", tok.get_vocab_size(with_added_tokens=True),
          "merges", len(j["model"]["merges"]), file=sys.stderr)


def byte_level(outdir):
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # GPT-2: ByteLevel with its built-in regex
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    j = train(tok, 700, ["<|endoftext|>"], alphabet)
    add_specials(j, ["<tool_call>"], special=False)
    add_specials(j, ["<mask>"])
    j["added_tokens"][-1]["lstrip"] = True
    j["added_tokens"][-2]["normalized"] = False
    merges_as_strings(j)
    emit(outdir, "gpt2", j, {"bos_token": None, "eos_token": "<|endoftext|>",
                             "add_bos_token": False})
    # SmolLM2 style: individual digits before ByteLevel
    j = json.loads(json.dumps(j))
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    emit(outdir, "smollm", j, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})

    # Llama-3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    j = train(tok, 900, [], alphabet)
    add_specials(j, specials)
    j["model"]["ignore_merges"] = True
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|begin_of_text|>": {
                               "id": "<|begin_of_text|>",
                               "ids": [j["added_tokens"][0]["id"]],
                               "tokens": ["<|begin_of_text|>"]}}}
    merges_as_pairs(j)
    emit(outdir, "llama3", j, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})

    # Qwen2
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    j = train(tok, 900, [], alphabet)
    add_specials(j, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    add_specials(j, ["<tool_call>", "</tool_call>"], special=False)
    for a in j["added_tokens"]:
        a["normalized"] = False
    merges_as_pairs(j)
    emit(outdir, "qwen2", j, {"bos_token": None, "eos_token": "<|im_end|>",
                              "add_bos_token": False})


def spm(outdir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                 split=True)
    t = train(tok, 900, [], [])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for tokstr, _ in sorted(t["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if tokstr not in vocab:
            vocab[tokstr] = len(vocab)
    merges = [" ".join(m) if isinstance(m, list) else m for m in t["model"]["merges"]]
    j = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added("<unk>", 0), added("<s>", 1), added("</s>", 2)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    for a in j["added_tokens"]:
        a["normalized"] = False
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
           "add_eos_token": False, "unk_token": "<unk>"}
    emit(outdir, "spm", j, cfg)
    j = json.loads(json.dumps(j))
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "first", "split": False}
    merges_as_pairs(j)
    emit(outdir, "metaspace", j, cfg)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outdir = os.path.join(root, "tests", "fixtures", "tokenizer")
    os.makedirs(outdir, exist_ok=True)
    byte_level(outdir)
    spm(outdir)


if __name__ == "__main__":
    main()
