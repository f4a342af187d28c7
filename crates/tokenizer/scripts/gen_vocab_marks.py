#!/usr/bin/env python3
"""Generates tests/fixtures/vocab/marks.inp and marks.<vocab>.out: strings
heavy in combining marks (Thai, Arabic, Hebrew, Devanagari, decomposed Latin,
keycaps, marks after spaces, digits, apostrophes and newlines), tokenized by
llama.cpp itself, in the format of its own vocabulary tests (strings
separated by lines `__ggml_vocab_test__`, ids one line per string, no BOS).

llama.cpp's `ggml-vocab-qwen35` vectors tokenize the same with Qwen2's
pre-tokenizer as with Qwen3.5's; six of these strings do not, so they tell
the two apart. The other vocabularies get the same strings as a check of
their pre-tokenizers on marks.

Needs llama.cpp's `llama-tokenize` (the llama-cpp-python 0.3.36 sdist's
llama.cpp, built) and its models/ directory:

    python3 scripts/gen_vocab_marks.py LLAMA_TOKENIZE MODELS_DIR OUT_DIR
"""
import os
import subprocess
import sys
import tempfile
import unicodedata

VOCABS = ["llama-spm", "llama-bpe", "gpt-2", "qwen2", "qwen35", "phi-3", "deepseek-llm",
          "deepseek-coder", "falcon", "starcoder", "refact", "mpt"]

STRINGS = [
    "สวัสดีครับ ยินดีต้อนรับ",
    "ภาษาไทยเป็นภาษาที่มีวรรณยุกต์",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "হ্যালো বিশ্ব",
    "வணக்கம் உலகம்",
    "ជំរាបសួរ ពិភពលោក",
    "مَرْحَبًا بِالْعَالَمِ",
    "שָׁלוֹם עוֹלָם",
    "Zalgo: Z\u0351\u036b\u0343a\u0360l\u0352g\u0315o\u0341!",
    "\u0301x",
    "\u0301\u0301\u0301",
    "1\ufe0f\u20e3 2\ufe0f\u20e3 #\ufe0f\u20e3",
    "❤\ufe0f ☺\ufe0f",
    "a\n\u0301b",
    "a \u0301b",
    "a  \u0301b",
    "a\t\u0301",
    "!\u0301?",
    " !\u0301?\n",
    "x'\u0301s it's",
    "'\u0301ll",
    "7\u0301 8\u0300",
    "e\u0301\r\n\u0301",
    "Tiếng Việt có dấu",
    "ราคา 1,250 บาท (ถูกมาก!)\nขอบคุณค่ะ",
    "ສະບາຍດີ ໂລກ",
    "မင်္ဂလာပါ ကမ္ဘာ",
    "٣٤٥ مُحَمَّدٌ! قَالَ: «نَعَمْ».",
    "Hebrew: בְּרֵאשִׁית בָּרָא (Genesis 1:1)",
] + [unicodedata.normalize("NFD", s) for s in [
    "Tiếng Việt có dấu",
    "Äpfel über Öl, naïve café, Ångström",
    "Crème brûlée à la française",
    "Ελληνικά: ἄνθρωπος",
    "한국어 텍스트",
    "ñandú mañana piñata",
]]


def tokenize(binary, vocab_file, text):
    """`llama-tokenize` on `text` exactly as given: no BOS, no special tokens, no escapes."""
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(text.encode("utf-8"))
    try:
        r = subprocess.run([binary, "-m", vocab_file, "-f", f.name, "--ids", "--no-bos",
                            "--no-escape", "--no-parse-special", "--log-disable"],
                           capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("[") and line.endswith("]"), r.stdout
    return [int(x) for x in line[1:-1].split(",") if x.strip()]


def main():
    binary, models, out_dir = sys.argv[1:4]
    with open(os.path.join(out_dir, "marks.inp"), "w", encoding="utf-8", newline="") as f:
        for s in STRINGS:
            f.write(s + "\n__ggml_vocab_test__\n")
    for vocab in VOCABS:
        vocab_file = os.path.join(models, f"ggml-vocab-{vocab}.gguf")
        with open(os.path.join(out_dir, f"marks.{vocab}.out"), "w") as f:
            for s in STRINGS:
                f.write(" ".join(map(str, tokenize(binary, vocab_file, s))) + "\n")


if __name__ == "__main__":
    main()
