"""Writes tests/data/tokenizer_corpus.jsonl: the strings the tokenizer parity test encodes with
both our tokenizer and the Python `tokenizers` package (one JSON string per line).

Deterministic (seeded): running it again gives the same file. Covers scripts (Latin, CJK, Korean,
Arabic, Hindi, Thai), emoji with ZWJ / skin tones / flags, combining marks in NFC and NFD form,
whitespace runs and CR/LF/tab mixes, digits, contractions, code, URLs, added tokens in and around
text (also partial ones), the Qwen-Image prompt template, random Unicode across the planes (code
points assigned in Python's Unicode database, printable or not), the empty string and long strings.

Usage: python tools/make_tokenizer_corpus.py [OUT]   (default: tests/data/tokenizer_corpus.jsonl)
"""
import json
import os
import random
import sys
import unicodedata

SEED = 20250611

ENGLISH = [
    "A cat sitting on a windowsill, watching the rain.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!", "hello world", "HELLO WORLD", "  leading spaces", "trailing spaces   ",
    "A photorealistic portrait of an elderly fisherman, dramatic lighting, 85mm lens, f/1.8.",
    "Sunset over snowy mountains; oil painting in the style of the Hudson River School.",
    "Mr. O'Neil's dog-eared copy of \"War & Peace\" (1869) -- 1,225 pages.",
    "e-mail: someone@example.com, phone +1 (555) 010-9999",
]
CHINESE = [
    "一只猫坐在窗台上，看着外面的雨。", "夕阳下的雪山，油画风格。", "你好，世界！",
    "宫崎骏风格的森林小屋，阳光透过树叶洒下斑驳的光影", "海报上写着“新年快乐”四个大字，红色背景，金色字体。",
    "２０２４年１２月３１日", "中文English混合text测试123",
]
JAPANESE = ["東京の夜景、ネオンが輝く。", "こんにちは、世界！", "ｶﾀｶﾅ ﾊﾝｶｸ", "ひらがなとカタカナと漢字"]
KOREAN = ["안녕하세요, 세계!", "서울의 밤거리, 네온사인", "한국어 텍스트 토크나이저 테스트"]
ARABIC = ["مرحبا بالعالم", "القطة تجلس على حافة النافذة", "السلام عليكم ورحمة الله"]
HINDI_THAI = ["नमस्ते दुनिया", "बिल्ली खिड़की पर बैठी है", "สวัสดีชาวโลก", "แมวนั่งอยู่บนขอบหน้าต่าง"]
OTHER = ["Привет, мир!", "Γειά σου Κόσμε", "Grüße aus Köln", "naïve café résumé", "ﬁﬂ ligatures", "Ǆ ǅ ǆ", "İstanbul ıi",
         "straße STRASSE", "Ⅻ ½ ² ① ㊿", "ℌ𝔢𝔩𝔩𝔬 𝐁𝐨𝐥𝐝", "\u00a0nbsp\u00a0", "zero\u200bwidth\u200cjoiner\u200d",
         "\u202eRTL override\u202c", "soft\u00adhyphen", "\ufeffBOM", "tab\u3000ideographic space",
         "\u0085NEL\u0085", "\u180eMongolian vowel separator", "\u2028line\u2029para", "\x1c\x1d\x1e\x1f separators",
         "\x00 nul \x01 \x7f", "\U000f0000 private \ue000", "\ufffd replacement", "ǰ̣ Ḝ"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇨🇳🇺🇸", "🧑🏿‍💻", "❤️‍🔥", "✌🏻 peace", "🐱🐶🐭🐹🐰🦊🐻🐼",
         "emoji in text 🎉🎉🎉 party", "👩🏻‍❤️‍💋‍👨🏼", "#️⃣ 1️⃣ *️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland"]
COMBINING = ["e\u0301", "\u00e9", "cafe\u0301", "caf\u00e9", "A\u030a", "\u00c5", "\u212b", "o\u0308\u0304",
             "\u1e0b\u0323", "d\u0323\u0307", "d\u0307\u0323", "\u0301 leading mark", "q\u0307\u0323", "\u1100\u1161\u11a8",
             "\u1100\u1161", "\uac00\u11a8", "\u0915\u093c", "\u0958", "\uf900\uf901", "\u2126 ohm", "\u0344", "\u0f73",
             "\u1f71\u0345", "Ελληνικά\u0301", "x\u0300\u0301\u0302\u0303\u0304\u0305\u0306\u0307", "\u0041\u030a\u0301"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n\n", " \n ", "\t\t\ttabs", "a\r\nb\r\nc", "a\n\nb", "x \t \n \r y",
              " " * 50, "\n" * 20, "\t \t \t", "line1\nline2\r\nline3\rline4", "   \n   \n", "end with newline\n",
              "a  b   c    d", "word \n\n  next"]
DIGITS = ["1", "12", "123", "1234567890", "3.14159265358979", "1,000,000", "2024-06-11", "0x1F4A9", "1e-10",
          "123456789012345678901234567890", "v1.2.3", "٣٤٥ Arabic-Indic", "१२३ Devanagari digits", "①②③", "Ⅳ", "99%"]
CODE = ["def f(x):\n    return x**2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "if (a && b || !c) {}",
        "<div class=\"x\">Hi</div>", "SELECT * FROM t WHERE id = 42;", "x => x * 2", "std::vector<int> v{1, 2, 3};",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }", "// comment\n/* block */", "a=b+c-d*e/f%g",
        "{\"key\": [1, 2, {\"nested\": null}]}", "$ ls -la | grep '.py' > out.txt 2>&1", "    indented\n\tmixed"]
CONTRACTIONS = ["it's", "It'S", "IT'S", "don't", "DON'T", "Don'T", "we're", "WE'RE", "I've", "I'VE", "I'm", "I'M",
                "you'll", "YOU'LL", "he'd", "HE'D", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''s", "rock'n'roll",
                "it\u2019s", "it'ſ", "o'clock", "'S'T'RE'VE'M'LL'D"]
URLS = ["https://github.com/modelscope/DiffSynth-Studio", "http://example.com/path?query=1&b=2#frag",
        "www.example.org/a_b-c.d", "ftp://user:pass@host:21/file.txt", "mailto:x@y.z", "file:///C:/Users/x.png"]
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
         "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
         "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
         "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
         "<think>", "</think>"]
PARTIAL_ADDED = ["<|im_start", "im_start|>", "<|im_end", "<|", "|>", "<|endoftext", "<|endoftext|", "<think", "</think",
                 "< think>", "<|IM_START|>", "<<|im_start|>>", "<|im_start|><|im_end|>", "<|im_start|>|>", "<|<|im_end|>"]
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
PROMPTS = ENGLISH + CHINESE + JAPANESE + KOREAN + [
    "精致肖像，水下少女，蓝裙飘逸，发丝轻扬，光影透澈，气泡环绕，面容恬静，细节精致，梦幻唯美。",
    "A coffee shop entrance features a chalkboard sign reading \"Qwen Coffee 😊 $2 per cup,\" with a neon light beside it.",
    "", " ", "\n", "a", "1girl, solo, long hair, looking at viewer, smile", "一只可爱的小猫 with a red hat, 4K, HDR",
]

GROUPS = [ENGLISH, CHINESE, JAPANESE, KOREAN, ARABIC, HINDI_THAI, OTHER, EMOJI, COMBINING, WHITESPACE, DIGITS, CODE,
          CONTRACTIONS, URLS, ADDED, PARTIAL_ADDED]


def assigned_code_points():
    """Code points assigned in Python's Unicode database (no surrogates), by plane group."""
    bmp, supplementary = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if unicodedata.category(chr(cp)) == "Cn":
            continue
        (bmp if cp < 0x10000 else supplementary).append(cp)
    return bmp, supplementary


def random_unicode(rng, bmp, supplementary, length):
    out = []
    for _ in range(length):
        r = rng.random()
        if r < 0.3:
            out.append(chr(rng.randrange(0x20, 0x7F)))
        elif r < 0.4:
            out.append(rng.choice(" \t\n\r"))
        elif r < 0.8:
            out.append(chr(rng.choice(bmp)))
        else:
            out.append(chr(rng.choice(supplementary)))
    return "".join(out)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "data", "tokenizer_corpus.jsonl")
    rng = random.Random(SEED)
    bmp, supplementary = assigned_code_points()
    corpus = [""]
    for group in GROUPS:
        corpus.extend(group)
    # NFC and NFD forms of everything that has accents or Hangul.
    for s in COMBINING + OTHER + KOREAN + ["naïve café", "Ångström", "한국어"]:
        corpus.append(unicodedata.normalize("NFD", s))
        corpus.append(unicodedata.normalize("NFC", s))
    # Added tokens glued to text, spaces and each other.
    for token in ADDED:
        corpus.append(f"before{token}after")
        corpus.append(f" {token} ")
        corpus.append(f"\n{token}\n")
        corpus.append(token * 3)
        corpus.append(f"é{token}\u0301")  # a combining mark right after an added token stays unnormalised
    for prompt in PROMPTS:
        corpus.append(TEMPLATE.format(prompt))
    # Contractions in context.
    for c in CONTRACTIONS:
        corpus.append(f"he said {c} and {c.upper()} and {c.lower()}")
    # Digit runs of every length up to 40.
    for n in range(1, 41):
        corpus.append("".join(rng.choice("0123456789") for _ in range(n)))
    # Whitespace runs before words / at the end (the \s+(?!\S) rule).
    for n in range(1, 25):
        corpus.append(" " * n + "x")
        corpus.append("x" + " " * n)
        corpus.append("x" + " " * n + "\n" + " " * (n % 5) + "y")
        corpus.append("\t" * (n % 7) + " " * n + "\r\n" * (n % 3) + "z")
    # Random mixes of everything above.
    pool = [s for g in GROUPS for s in g] + PROMPTS
    for _ in range(900):
        parts = [rng.choice(pool) for _ in range(rng.randint(2, 8))]
        sep = rng.choice(["", " ", "\n", "  ", "\t", "\r\n", ""])
        corpus.append(sep.join(parts))
    # Random Unicode across the planes.
    for _ in range(700):
        corpus.append(random_unicode(rng, bmp, supplementary, rng.randint(1, 40)))
    # Long strings.
    corpus.append(" ".join(ENGLISH) * 20)
    corpus.append("".join(CHINESE) * 30)
    corpus.append("a" * 3000)
    corpus.append("🎉" * 500)
    corpus.append(" " * 2000 + "end")
    corpus.append("=" * 1000)
    corpus.append(random_unicode(rng, bmp, supplementary, 3000))
    corpus.append(TEMPLATE.format(" ".join(rng.choice(pool) for _ in range(200))))

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for s in corpus:
            # ASCII-only lines: a raw U+2028 or U+0085 would split a line for str.splitlines().
            f.write(json.dumps(s, ensure_ascii=True) + "\n")
    print(f"{out_path}: {len(corpus)} strings, {os.path.getsize(out_path)} bytes")


if __name__ == "__main__":
    main()
