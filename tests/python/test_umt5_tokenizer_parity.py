"""`diffsynth tokenize` on the umt5 (Wan2.1 text encoder) Unigram tokenizer in data/umt5-tokenizer,
and the Wan reference's text cleaning, against the Python reference, exactly, on every string of
tests/data/umt5_corpus.jsonl (tools/make_umt5_corpus.py), each comparison one CLI process:
  - ids vs `tokenizers.Tokenizer.from_file(tokenizer.json).encode(text).ids` (--semantics tokenizers);
  - ids vs transformers' AutoTokenizer (a T5Tokenizer, which rebuilds the pipeline) on raw text;
  - ids + mask vs the reference `HuggingfaceTokenizer(name, seq_len=512, clean='whitespace')`,
    padded / truncated to 512;
  - the cleaning alone (whitespace / lower / canonicalize) vs the reference's functions, on the
    corpus and on every Unicode code point in a cased context (Final_Sigma), mojibake included:
    ftfy's fix_encoding is reproduced, so nothing may differ;
  - decoding; the constants tests/cpp/test_unigram_tokenizer.cpp asserts; CLI errors."""
import json
import os
import random
import shutil

import pytest
from tokenizers import Tokenizer

from conftest import run

SOURCE = os.environ.get("DIFFSYNTH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER_DIR = os.path.join(SOURCE, "data", "umt5-tokenizer")
QWEN_DIR = os.path.join(SOURCE, "data", "qwen-tokenizer")
CORPUS = os.path.join(SOURCE, "tests", "data", "umt5_corpus.jsonl")


@pytest.fixture(scope="module")
def corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().split("\n") if line]


@pytest.fixture(scope="module")
def raw_reference():
    return Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_reference():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def reference_clean(mode):
    """The reference's own HuggingfaceTokenizer._clean for `mode` (no tokenizer loaded)."""
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer
    obj = object.__new__(HuggingfaceTokenizer)
    obj.clean = mode
    return obj._clean


def tokenize(diffsynth_bin, lines, *flags, tokenizer=TOKENIZER_DIR):
    """Runs one `diffsynth tokenize --json` process on all lines; returns the parsed output lines."""
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    p = run([diffsynth_bin, "tokenize", "--tokenizer", tokenizer, "--json", *flags], input=stdin, timeout=900)
    out = [json.loads(line) for line in p.stdout.split("\n") if line]
    assert len(out) == len(lines), (len(out), len(lines), p.stderr)
    return out


def first_differences(texts, want, got, describe=repr, n=5):
    bad = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    return bad, "\n".join(f"{t[:120]!r}\n  reference: {describe(w)}\n  ours:      {describe(g)}" for t, w, g in bad[:n])


def test_corpus_is_large_and_varied(corpus, hf_reference):
    import ftfy
    assert len(corpus) >= 2000 and "" in corpus
    assert sum(len(hf_reference(s).input_ids) > 512 for s in corpus) >= 10  # truncation is exercised
    assert sum(ftfy.fix_encoding(s) != s for s in corpus) >= 300            # mojibake repair is exercised
    assert sum("&" in s and "<" in s for s in corpus) >= 20                  # ftfy's "auto" HTML switch
    assert any("<extra_id_" in s for s in corpus) and any("\u2581" in s for s in corpus)


def test_encode_matches_tokenizers(diffsynth_bin, raw_reference, corpus):
    got = tokenize(diffsynth_bin, corpus, "--semantics", "tokenizers")
    want = [raw_reference.encode(s).ids for s in corpus]
    bad, report = first_differences(corpus, want, got, lambda ids: [raw_reference.id_to_token(i) for i in ids])
    assert not bad, f"{len(bad)} of {len(corpus)} strings differ from tokenizers:\n{report}"


def test_encode_matches_transformers(diffsynth_bin, hf_reference, corpus):
    got = tokenize(diffsynth_bin, corpus)  # default semantics: transformers
    want = [hf_reference(s).input_ids for s in corpus]
    bad, report = first_differences(corpus, want, got, hf_reference.convert_ids_to_tokens)
    assert not bad, f"{len(bad)} of {len(corpus)} strings differ from transformers:\n{report}"


def test_no_special_tokens(diffsynth_bin, hf_reference, corpus):
    sample = corpus[:400]
    got = tokenize(diffsynth_bin, sample, "--no-special-tokens")
    assert got == [hf_reference(s, add_special_tokens=False).input_ids for s in sample]


def test_wan_reference_pipeline_ids_and_mask(diffsynth_bin, corpus):
    """What WanVideoPipeline feeds its text encoder: cleaned, 512 ids and mask, </s> kept."""
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer
    reference = HuggingfaceTokenizer(name=TOKENIZER_DIR, seq_len=512, clean="whitespace")
    ids, mask = reference(corpus, return_mask=True, add_special_tokens=True)
    ids, mask = ids.tolist(), mask.tolist()
    got = tokenize(diffsynth_bin, corpus, "--clean", "whitespace", "--max-length", "512", "--pad-to-max-length")
    assert all(len(g["input_ids"]) == 512 == len(g["attention_mask"]) for g in got)
    bad, report = first_differences(corpus, ids, [g["input_ids"] for g in got], lambda x: [i for i in x if i])
    assert not bad, f"{len(bad)} of {len(corpus)} id rows differ from HuggingfaceTokenizer:\n{report}"
    assert [g["attention_mask"] for g in got] == mask
    assert sum(row[-1] == 1 for row in ids) >= 5  # truncated rows end with </s>


@pytest.mark.parametrize("mode", ["whitespace", "lower", "canonicalize"])
def test_cleaning_matches_reference(diffsynth_bin, corpus, mode):
    clean = reference_clean(mode)
    want = [clean(s) for s in corpus]
    got = tokenize(diffsynth_bin, corpus, "--clean", mode, "--print-clean")
    bad, report = first_differences(corpus, want, got)
    assert not bad, f"{len(bad)} of {len(corpus)} strings cleaned differently ({mode}), mojibake included:\n{report}"
    assert sum(w != s for w, s in zip(want, corpus)) >= 1000


def every_code_point_lines():
    """All code points but the surrogates, each between cased letters and around a capital sigma
    ('a' c 'Σ' and 'aΣ' c), in lines of 300."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    return [" ".join(f"a{chr(c)}\u03a3 a\u03a3{chr(c)}" for c in cps[i:i + 300]) for i in range(0, len(cps), 300)]


def test_cleaning_every_code_point(diffsynth_bin):
    from diffsynth.models.wan_video_text_encoder import basic_clean, canonicalize, whitespace_clean
    lines = every_code_point_lines()
    basic = [basic_clean(s) for s in lines]
    want = {"whitespace": [whitespace_clean(b) for b in basic]}
    want["lower"] = [w.lower() for w in want["whitespace"]]
    want["canonicalize"] = [canonicalize(b) for b in basic]
    for mode, expected in want.items():
        got = tokenize(diffsynth_bin, lines, "--clean", mode, "--print-clean")
        bad = [i for i, (w, g) in enumerate(zip(expected, got)) if w != g]
        if bad:
            w, g = expected[bad[0]], got[bad[0]]
            k = next((k for k in range(min(len(w), len(g))) if w[k] != g[k]), min(len(w), len(g)))
            pytest.fail(f"{mode}: {len(bad)} of {len(lines)} lines differ; first at {k}: "
                        f"reference {w[max(0, k - 20):k + 20]!r}, ours {g[max(0, k - 20):k + 20]!r}")


def test_decode_matches_tokenizers(diffsynth_bin, raw_reference, corpus):
    sequences = [raw_reference.encode(s).ids for s in corpus[:800]]
    rng = random.Random(5)
    vocab = raw_reference.get_vocab_size(with_added_tokens=True)
    for _ in range(1500):
        sequences.append([rng.randrange(vocab) if rng.random() < 0.6 else rng.choice([0, 1, 2, 3, 259, 256299])
                          for _ in range(rng.randint(0, 12))])
    for skip in (False, True):
        got = tokenize(diffsynth_bin, sequences, "--decode", *(["--skip-special-tokens"] if skip else []),
                       "--semantics", "tokenizers")
        want = raw_reference.decode_batch(sequences, skip_special_tokens=skip)
        bad = [(ids, w, g) for ids, w, g in zip(sequences, want, got) if w != g]
        assert not bad, f"{len(bad)} decodes differ (skip_special_tokens={skip}); first: " + "; ".join(
            f"{ids} -> tokenizers {w!r}, ours {g!r}" for ids, w, g in bad[:3])


def test_bpe_pad_to_max_length_matches_transformers(diffsynth_bin):
    from transformers import Qwen2Tokenizer
    hf = Qwen2Tokenizer.from_pretrained(QWEN_DIR)
    batch = ["a cat", "一只猫坐在窗台上", "x " * 40]
    want = hf(batch, max_length=16, padding="max_length", truncation=True)
    got = tokenize(diffsynth_bin, batch, "--max-length", "16", "--pad-to-max-length", tokenizer=QWEN_DIR)
    assert [g["input_ids"] for g in got] == want["input_ids"]
    assert [g["attention_mask"] for g in got] == want["attention_mask"]


def test_gtest_constants_match_reference(raw_reference, hf_reference):
    # The exact ids and strings tests/cpp/test_unigram_tokenizer.cpp asserts.
    import ftfy
    import html
    assert hf_reference("Hello world").input_ids == [23231, 3914, 1]
    assert hf_reference("a\tb").input_ids == [289, 748, 1]
    assert hf_reference("a\u018d\u0195b").input_ids == [289, 2, 485, 1]
    assert hf_reference("x<extra_id_0>y").input_ids == [675, 256299, 345, 1]
    assert raw_reference.encode("a\tb").ids == [289, 3, 485, 1]
    assert raw_reference.encode("a\u018d\u0195b").ids == [289, 3, 485, 1]
    assert len(hf_reference) == raw_reference.get_vocab_size(with_added_tokens=True) == 256300
    assert hf_reference.pad_token_id == 0
    long = hf_reference(["hello " * 600, "Hello world"], padding="max_length", truncation=True, max_length=512)
    assert long.input_ids[0][510:] == [154424, 1] and long.input_ids[1][:4] == [23231, 3914, 1, 0]
    assert long.attention_mask[1][:4] == [1, 1, 1, 0]
    text = "  &amp;lt;b&amp;gt; \uff26\uff55\uff4c\uff4c  \u201cquoted\u201d\t\ufb01  "
    assert reference_clean("whitespace")(text) == "<b> Full \"quoted\" fi"
    assert reference_clean("lower")(text) == "<b> full \"quoted\" fi"
    assert reference_clean("canonicalize")(text) == "b full quoted fi"
    assert reference_clean("canonicalize")("Snake_Case \u03a3\u0391\u03a3") == "snake case \u03c3\u03b1\u03c2"
    assert ftfy.fix_text("\u00e2\u0153\u201d No problems") == "\u2714 No problems"
    assert ftfy.fix_text("voil\u00c3 le travail") == "voil\u00e0 le travail"
    assert html.unescape("&ampxyz &#128; &#x1F600;") == "&xyz \u20ac \U0001F600"
    assert "\u0130".lower() == "i\u0307"


def test_semantics_differ_where_documented(diffsynth_bin, raw_reference, hf_reference):
    # Tabs / newlines split words for T5Tokenizer, and its unknown id is 2, not 3.
    texts = ["a\tb", "a\nb", "a\u018db", "x  y"]
    ours_hf = tokenize(diffsynth_bin, texts)
    ours_raw = tokenize(diffsynth_bin, texts, "--semantics", "tokenizers")
    assert ours_hf == [hf_reference(t).input_ids for t in texts]
    assert ours_raw == [raw_reference.encode(t).ids for t in texts]
    assert ours_hf[:3] != ours_raw[:3]


def copy_tokenizer(tmp_path, **edits):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(os.path.join(TOKENIZER_DIR, "tokenizer_config.json"), d)
    for name, text in edits.items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize("args,stdin,needle", [
    (["--tokenizer", "/nonexistent/umt5"], None, "/nonexistent/umt5"),
    (["--clean", "bogus", "x"], None, "--clean needs whitespace, lower, canonicalize or none"),
    (["--clean"], None, "--clean needs a value"),
    (["--print-clean", "x"], None, "--print-clean needs --clean MODE"),
    (["--clean", "whitespace", "--print-clean", "--max-length", "4", "x"], None, "--print-clean prints texts"),
    (["--pad-to-max-length", "x"], None, "--pad-to-max-length needs --max-length"),
    (["--pad", "--pad-to-max-length", "--max-length", "4", "x"], None, "exclude each other"),
    (["--semantics", "hf", "x"], None, "--semantics needs transformers or tokenizers"),
    (["--decode", "--clean", "whitespace", "1"], None, "apply to encoding, not --decode"),
    (["--decode", "1 999999"], None, "token id 999999 is not in the vocabulary"),
    (["--json"], "\"\\udc00\"\n", "not a JSON line"),
])
def test_cli_errors_exit_2_with_one_line(diffsynth_bin, args, stdin, needle):
    p = run([diffsynth_bin, "tokenize", *(["--tokenizer", TOKENIZER_DIR] if "--tokenizer" not in args else []), *args],
            check=False, input=stdin or "", timeout=60)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("diffsynth tokenize: error: ") and needle in lines[0], p.stderr


@pytest.mark.parametrize("content,needles", [
    ('{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["a", -1.0], ', ["malformed tokenizer JSON"]),
    ('{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["a"]]}}', ["model.vocab entries must be [piece, score]"]),
    ('{"model": {"type": "WordPiece", "vocab": {}}}', ["unsupported model type WordPiece (supported: BPE, Unigram)"]),
    ('{"normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}, '
     '"model": {"type": "Unigram", "unk_id": 0, "vocab": [["a", -1.0]]}}', ["unsupported normalizer Precompiled"]),
    ('{"pre_tokenizer": {"type": "Metaspace"}, "model": {"type": "Unigram", "unk_id": 9, "vocab": [["a", -1.0]]}}',
     ["model.unk_id 9 is outside the vocabulary"]),
])
def test_cli_error_bad_tokenizer_file(tmp_path, diffsynth_bin, content, needles):
    d = copy_tokenizer(tmp_path, **{"tokenizer.json": content})
    p = run([diffsynth_bin, "tokenize", "--tokenizer", d, "x"], check=False, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().split("\n")) == 1, p.stderr
    assert str(d / "tokenizer.json") in p.stderr and all(n in p.stderr for n in needles), p.stderr


def test_cli_error_unsupported_tokenizer_class(tmp_path, diffsynth_bin):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(os.path.join(TOKENIZER_DIR, "tokenizer.json"), d)
    (d / "tokenizer_config.json").write_text('{"tokenizer_class": "XLMRobertaTokenizer"}')
    p = run([diffsynth_bin, "tokenize", "--tokenizer", d, "x"], check=False, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().split("\n")) == 1, p.stderr
    assert "tokenizer_class XLMRobertaTokenizer" in p.stderr and "T5Tokenizer" in p.stderr, p.stderr
    # As the file stands it loads.
    p = run([diffsynth_bin, "tokenize", "--tokenizer", d, "--semantics", "tokenizers", "Hello world"], timeout=60)
    assert p.stdout.strip() == "23231 3914 1"
