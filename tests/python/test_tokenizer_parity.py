"""`diffsynth tokenize` (our C++ byte-level BPE) against the Python `tokenizers` package and
transformers' Qwen2Tokenizer on the Qwen tokenizer in data/qwen-tokenizer: every string of
tests/data/tokenizer_corpus.jsonl (tools/make_tokenizer_corpus.py) in one process, exact ids;
decoding; the pipeline's padded / truncated batch; CLI errors (exit 2, one line)."""
import json
import os
import random

import pytest
from tokenizers import Tokenizer

from conftest import run

SOURCE = os.environ.get("DIFFSYNTH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER_DIR = os.path.join(SOURCE, "data", "qwen-tokenizer")
CORPUS = os.path.join(SOURCE, "tests", "data", "tokenizer_corpus.jsonl")


@pytest.fixture(scope="module")
def reference():
    return Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))


@pytest.fixture(scope="module")
def corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().split("\n") if line]


def tokenize(diffsynth_bin, lines, *flags):
    """Runs one `diffsynth tokenize --json` process on all lines; returns the parsed output lines."""
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    p = run([diffsynth_bin, "tokenize", "--tokenizer", TOKENIZER_DIR, "--json", *flags], input=stdin, timeout=600)
    out = [json.loads(line) for line in p.stdout.split("\n") if line]
    assert len(out) == len(lines), (len(out), len(lines), p.stderr)
    return out


def describe(reference, ids):
    return [reference.id_to_token(i) for i in ids]


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 2000
    assert "" in corpus and max(len(s) for s in corpus) > 2000


def test_encode_corpus_matches_tokenizers(diffsynth_bin, reference, corpus):
    ours = tokenize(diffsynth_bin, corpus)
    mismatches = []
    for text, got in zip(corpus, ours):
        want = reference.encode(text).ids
        if got != want:
            mismatches.append(f"{text!r}\n  tokenizers: {describe(reference, want)}\n  ours:       {describe(reference, got)}")
    assert not mismatches, f"{len(mismatches)} of {len(corpus)} strings differ; first ones:\n" + "\n".join(mismatches[:5])


def test_decode_matches_tokenizers(diffsynth_bin, reference, corpus):
    # Round trip of the corpus, plus random id sequences (partial UTF-8 byte tokens, added tokens
    # among them) that exercise the lossy UTF-8 decoding.
    sequences = [reference.encode(s).ids for s in corpus]
    rng = random.Random(7)
    vocab = reference.get_vocab_size(with_added_tokens=True)
    for _ in range(2000):
        sequences.append([rng.randrange(vocab) if rng.random() < 0.5 else rng.randrange(300)
                          for _ in range(rng.randint(0, 12))])
    for skip in (False, True):
        ours = tokenize(diffsynth_bin, sequences, "--decode", *(["--skip-special-tokens"] if skip else []))
        want = reference.decode_batch(sequences, skip_special_tokens=skip)
        bad = [(ids, w, o) for ids, w, o in zip(sequences, want, ours) if w != o]
        assert not bad, f"{len(bad)} decodes differ (skip_special_tokens={skip}); first: " + "; ".join(
            f"{ids} -> tokenizers {w!r}, ours {o!r}" for ids, w, o in bad[:3])


def test_plain_lines_and_arguments(diffsynth_bin, reference):
    p = run([diffsynth_bin, "tokenize", "--tokenizer", TOKENIZER_DIR, "hello world", "一只猫<|im_end|>"])
    assert p.stdout.split("\n")[:2] == [" ".join(map(str, reference.encode(s).ids)) for s in ["hello world", "一只猫<|im_end|>"]]
    ids = reference.encode("café 🎉").ids
    p = run([diffsynth_bin, "tokenize", "--tokenizer", TOKENIZER_DIR, "--decode"], input=" ".join(map(str, ids)) + "\n")
    assert p.stdout == "café 🎉\n"
    # Default tokenizer: the project's data/qwen-tokenizer, found from the executable's folder.
    p = run([diffsynth_bin, "tokenize", "hello world"])
    assert p.stdout.strip() == " ".join(map(str, reference.encode("hello world").ids))


@pytest.mark.parametrize("max_length", [1, 8, 40, 300])
def test_batch_matches_transformers(diffsynth_bin, corpus, max_length):
    from transformers import Qwen2Tokenizer
    hf = Qwen2Tokenizer.from_pretrained(TOKENIZER_DIR)
    template = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
                "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
                "<|im_start|>assistant\n")
    rng = random.Random(max_length)
    batch = [template.format(rng.choice(corpus)) for _ in range(6)] + [rng.choice(corpus) for _ in range(6)]
    want = hf(batch, max_length=max_length, padding=True, truncation=True)
    ours = tokenize(diffsynth_bin, batch, "--max-length", str(max_length), "--pad")
    assert [o["input_ids"] for o in ours] == want["input_ids"]
    assert [o["attention_mask"] for o in ours] == want["attention_mask"]


def test_gtest_constants_match_reference(reference):
    # The exact ids tests/cpp/test_tokenizer.cpp asserts.
    assert reference.encode("hello world <|im_start|>x").ids == [14990, 1879, 220, 151644, 87]
    assert reference.encode("a").ids == [64]
    assert reference.encode("<|endoftext|>").ids == [151643]
    assert reference.token_to_id("<|im_end|>") == 151645
    assert reference.get_vocab_size(with_added_tokens=True) == 151669
    text = "<|im_start|>user\n一只猫 🐱 café e\u0301<|im_end|>"
    assert reference.decode(reference.encode(text).ids, skip_special_tokens=False) == "<|im_start|>user\n一只猫 🐱 café \u00e9<|im_end|>"
    assert reference.decode([64, reference.token_to_id("\u00c4")], skip_special_tokens=False) == "a\ufffd"


@pytest.mark.parametrize("args,stdin,needle", [
    (["--tokenizer", "/nonexistent/tok", "x"], None, "/nonexistent/tok"),
    (["--decode", "1 2 abc"], None, "not a token id: \"abc\""),
    (["--decode", "1 999999"], None, "token id 999999 is not in the vocabulary"),
    (["--decode", "--json"], "[1, \"x\"]\n", "not a token id"),
    (["--json"], "not json\n", "not a JSON line"),
    (["--max-length", "0", "x"], None, "--max-length needs a positive integer"),
    (["--max-length", "99999999999999999999", "x"], None, "--max-length needs a positive integer up to 2147483647"),
    (["--bogus"], None, "unknown option --bogus"),
    (["--tokenizer"], None, "--tokenizer needs a value"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, diffsynth_bin, args, stdin, needle):
    p = run([diffsynth_bin, "tokenize", *(["--tokenizer", TOKENIZER_DIR] if "--tokenizer" not in args else []), *args],
            check=False, input=stdin or "", timeout=60)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("diffsynth tokenize: error: ") and needle in lines[0], p.stderr


def test_cli_error_bad_tokenizer_file(tmp_path, diffsynth_bin):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {')
    p = run([diffsynth_bin, "tokenize", "--tokenizer", tmp_path, "x"], check=False, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().split("\n")) == 1
    assert str(tmp_path / "tokenizer.json") in p.stderr and "malformed tokenizer JSON" in p.stderr, p.stderr


def test_cli_error_no_default_tokenizer(tmp_path, diffsynth_bin):
    # A copy of the launcher outside any source tree, with no DIFFSYNTH_DATA_DIR: a clear error.
    lonely = tmp_path / "bin" / "diffsynth"
    lonely.parent.mkdir()
    lonely.write_bytes(open(diffsynth_bin, "rb").read())
    lonely.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DIFFSYNTH_DATA_DIR"}
    p = run([lonely, "tokenize", "x"], check=False, env=env, timeout=60)
    assert p.returncode == 2 and "no default tokenizer found" in p.stderr and len(p.stderr.strip().split("\n")) == 1
    env["DIFFSYNTH_DATA_DIR"] = os.path.join(SOURCE, "data")
    p = run([lonely, "tokenize", "x"], env=env, timeout=60)
    assert p.stdout.strip() == "87"
