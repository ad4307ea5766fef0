"""Writes tests/data/umt5_corpus.jsonl: the strings the umt5 (Wan2.1 text encoder) tokenizer and
text-cleaning parity test runs through `diffsynth tokenize` and through the Python reference
(`tokenizers`, transformers' T5Tokenizer, ftfy / html / the Wan reference's cleaning), one JSON
string per line.

Deterministic (seeded): running it again gives the same file. Covers Wan-style prompts (Chinese and
English, the default negative prompt), Chinese, Japanese, Korean, full-width and half-width forms,
curly quotes, HTML entities (named, numeric, upper-case, double-escaped `&amp;lt;`, with and without
a literal '<'), emoji, control characters and ANSI escapes, Latin ligatures, NBSP and every other
Unicode space, line breaks (CR, CRLF, U+2028, NEL), mixed scripts, mojibake (UTF-8 decoded as
windows-1252 / latin-1 / cp1251 / macroman / cp437 / ..., NBSPs turned into spaces, lossy
replacements), umt5's added tokens (`<extra_id_N>`, `</s>`, `<pad>`, `<unk>`, `<s>`) and U+2581,
runs of spaces, prompts longer than 512 tokens, the empty string, and random Unicode (code points
assigned in Python's Unicode database).

Usage: python tools/make_umt5_corpus.py [OUT]   (default: tests/data/umt5_corpus.jsonl)
"""
import json
import os
import random
import sys
import unicodedata

SEED = 20251202

WAN_PROMPTS = [
    "纪实摄影风格画面，一只活泼的小狗在绿茵茵的草地上迅速奔跑。小狗毛色棕黄，两只耳朵立起，神情专注而欢快。阳光洒在它身上，"
    "使得毛发看上去格外柔软而闪亮。背景是一片开阔的草地，偶尔点缀着几朵野花，远处隐约可见蓝天和几片白云。透视感鲜明，"
    "捕捉小狗奔跑时的动感和四周草地的生机。中景侧面移动视角。",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走",
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    "A stylish woman walks down a Tokyo street filled with warm glowing neon and animated city signage. She wears a "
    "black leather jacket, a long red dress, and black boots, and carries a black purse.",
    "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard.",
    "一位身穿汉服的少女站在樱花树下，微风吹过，花瓣飘落，镜头缓缓推近，电影质感，4K。",
    "A cinematic drone shot over snowy mountains at sunrise, volumetric light, 24fps, film grain.",
    "赛博朋克风格的城市夜景，霓虹灯闪烁，雨水在地面反射出五彩的光，一辆飞行汽车从画面右侧掠过。",
]
ENGLISH = [
    "A cat sitting on a windowsill, watching the rain.", "The quick brown fox jumps over the lazy dog.",
    "Hello, world!", "hello world", "HELLO WORLD", "  leading spaces", "trailing spaces   ",
    "Mr. O'Neil's dog-eared copy of \"War & Peace\" (1869) -- 1,225 pages.", "snake_case_words and kebab-case-words",
    "e-mail: someone@example.com, URL https://example.com/a_b?x=1&y=2#frag", "C++ / C# / F# (2024) [draft] {v2}",
]
CHINESE = ["一只猫坐在窗台上，看着外面的雨。", "夕阳下的雪山，油画风格。", "你好，世界！", "中文English混合text测试123",
           "海报上写着“新年快乐”四个大字，红色背景，金色字体。", "「引号」『书名号』《三体》〈注〉【标题】", "繁體中文：電腦、網絡、軟體"]
JAPANESE = ["東京の夜景、ネオンが輝く。", "こんにちは、世界！", "ｶﾀｶﾅ ﾊﾝｶｸ ｶﾞｷﾞｸﾞ", "ひらがなとカタカナと漢字", "ｳﾙﾄﾗﾏﾝ･ｾﾌﾞﾝ｡"]
KOREAN = ["안녕하세요, 세계!", "서울의 밤거리, 네온사인", "한국어 텍스트 토크나이저 테스트", "ﾡﾢﾣ half-width jamo"]
FULLWIDTH = ["ＬＯＵＤ　ＮＯＩＳＥＳ", "２０２４年１２月３１日", "ＡＢＣ　ａｂｃ　１２３！？", "（全角括号）＃＄％＆＊＋",
             "Ｕﾀｰﾝ", "￥１００　￡５　￠", "～｛｝［］＜＞｜＼＾＿｀", "￣￤￨￩￪￫￬￭￮"]
QUOTES = ["\u201chere\u2019s a test\u201d", "\u2018single\u2019 \u201adouble low\u201e \u201flow-9\u201b",
          "it\u2019s \u02bcokina\u02bc", "\u00abguillemets\u00bb \u2039single\u203a", "\u300ccorner\u300d \u301dx\u301e",
          "“smart” ‘quotes’ everywhere", "It’s a “test” — really…"]
HTML = ["&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;lt;", "&amp;lt;b&amp;gt;double&amp;lt;/b&amp;gt;", "&amp;amp;amp;",
        "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!", "P&EACUTE;REZ", "BUNDESSTRA&SZLIG;E", "&ntilde; &Ntilde; &NTILDE; &nTILDE;",
        "&macr;\\_(ã\x83\x84)_/&macr;", "&copy; 2024 &reg; &trade;", "&nbsp;non&nbsp;breaking&nbsp;", "&#65;&#x42;&#X43;",
        "&#0; &#1; &#13; &#128; &#150; &#x1F600; &#59; &#xD800; &#99999999999; &#x110000;", "&ampxyz &amp &lt3 &notit; &not",
        "&#12ab; &#xZZ; &#; &#x; & amp; &;", "<b>&amp;</b> stays", "a < b &amp; c", "x &amp; y\n<p>&amp;</p>\n&amp; again",
        "&Jscr;ohn &HilbertSpace;ancock &checkmark;", "&fjlig; &NotEqualTilde; &acE;", "&AMP; &LT; &GT; &QUOT;",
        "&aacute&eacute; &AElig &aelig;", "&" * 5 + "amp;" * 3, "&&amp;;", "&#x41;&#x42", "&EACUTE &eacute",
        "&" + "a" * 30 + ";", "&" + "b" * 40, "&zwj;&zwnj;&lrm;&rlm;", "&Tab;&NewLine;&excl;"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇨🇳🇺🇸", "🧑🏿‍💻", "❤️‍🔥", "emoji in text 🎉🎉🎉 party",
         "#️⃣ 1️⃣ *️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland", "☺️☹️✨⭐️🌟"]
CONTROL = ["\x00 nul \x01 \x02 \x7f", "bell\x07 backspace\x08 vt\x0b ff\x0c", "\x1b[36;44mI'm blue\x1b[0m",
           "\x1b[1mbold\x1b[22m \x1b[38;5;196mred\x1b[0m", "\x1b]0;title\x07", "\x1b[٣m arabic digit", "\x1b[;m x",
           "\x1c\x1d\x1e\x1f separators", "\ufeffBOM at start", "in\ufeffside", "\u206a\u206b\u206f deprecated",
           "\ufff9\ufffa\ufffb annotation \ufffc obj", "\x80\x81\x8d\x8f\x90\x9d\x9f C1 controls", "\x85NEL\x85",
           "zero\u200bwidth\u200cjoiner\u200d", "\u202eRTL override\u202c", "soft\u00adhyphen", "\U000e0041 tag",
           "\ud7ff\ue000\uf8ff private", "\ufffd replacement \ufffd", "\U0010fffd plane 16"]
LIGATURES = ["ﬁﬂ ligatures", "ﬂuﬃeﬆ", "ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ", "Ĳsselmeer ĳs", "ŉ", "Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ Ǳ ǲ ǳ", "æ œ Æ Œ stay"]
SPACES = ["\u00a0nbsp\u00a0", "a\u00a0\u00a0b", "tab\u3000ideographic space", "\u2000\u2001\u2002\u2003\u2004\u2005\u2006",
          "\u2007\u2008\u2009\u200a hair", "\u202f\u205f narrow", "\u1680ogham", "\u180eMongolian vowel separator",
          "\u2028line\u2029para", "a\r\nb\rc\nd", "\r\n\r\n", "  ", "   ", "\t", "\n", " \n ", "a  b   c    d",
          "x \t \n \r y", " " * 40 + "x", "x" + " " * 40, "\n" * 10, "\t\t\ttabs", "word \n\n  next", "\x0b\x0c vt ff",
          "\u200b zwsp is not space \u200b", "\u2060 word joiner"]
MIXED = ["Привет, мир!", "Γειά σου Κόσμε", "ΣΑΣ ΟΔΟΣ ΣΟΦΟΣ", "ΌΣΟΣ Σ.Σ", "Grüße aus Köln", "naïve café résumé",
         "İstanbul ıi", "straße STRASSE", "Ⅻ ½ ² ① ㊿", "ℌ𝔢𝔩𝔩𝔬 𝐁𝐨𝐥𝐝", "مرحبا بالعالم", "नमस्ते दुनिया",
         "สวัสดีชาวโลก", "שלום עולם", "Tiếng Việt có dấu", "ქართული", "Ελληνικά\u0301", "cafe\u0301 e\u0301",
         "\u1100\u1161\u11a8", "A\u030a \u212b \u2126", "ǰ̣ Ḝ", "Ꙋ ꙋ Ѡ", "𐐀𐐨 Deseret", "Ꭰ ꭰ Cherokee"]
UMT5_TOKENS = ["</s>", "<pad>", "<unk>", "<s>", "<extra_id_0>", "<extra_id_1>", "<extra_id_99>", "<extra_id_299>",
               "<extra_id_300>", "<extra_id_>", "<extra_id_0", "extra_id_0>", "< extra_id_0>", "<EXTRA_ID_0>",
               "<extra_id_0><extra_id_1>", "a</s>b", "</s></s>", "<pad><pad>", "[eod] [web] [wiki] [translate]",
               "\u2581", "\u2581\u2581a", "a \u2581b", "a\u2581 b", "\u2581 \u2581", "▁Hello▁world", "x▁", "▁"]
MOJIBAKE_SOURCES = [
    "café", "naïve résumé", "Straße", "“quoted” — dash … ellipsis", "It’s", "à la mode", "fácil", "São Paulo",
    "Ñandú", "Ελληνικά", "русский текст", "český jazyk", "łódź", "中文", "日本語", "한국어", "😀 emoji", "€5 ™ ©",
    "✔ No problems", "señor", "Dürst", "Ø Å Æ", "â€œ", "voilà le travail", "às vezes", "àquele", "Müller", "½ °C"]
MOJIBAKE_ENCODINGS = ["windows-1252", "latin-1", "cp1251", "cp1250", "cp1253", "cp1254", "cp1257", "iso-8859-2",
                      "mac_roman", "cp437", "cp850"]
TEMPLATES = ["{}", "{}.", " {} ", "Text: {}", "{}\n{}", "<p>{}</p>", "“{}”", "{} &amp; {}"]


def assigned_code_points():
    """Code points assigned in Python's Unicode database (no surrogates), by plane group."""
    bmp, supplementary = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) == "Cn":
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
            out.append(rng.choice(" \t\n\r\u00a0\u3000&;<"))
        elif r < 0.8:
            out.append(chr(rng.choice(bmp)))
        else:
            out.append(chr(rng.choice(supplementary)))
    return "".join(out)


def mojibake(rng, text):
    """UTF-8 bytes read in a single-byte encoding, sometimes twice, sometimes with NBSP -> space."""
    enc = rng.choice(MOJIBAKE_ENCODINGS)
    out = text.encode("utf-8").decode(enc, errors=rng.choice(["replace", "ignore"]))
    if rng.random() < 0.25:
        enc2 = rng.choice(MOJIBAKE_ENCODINGS[:3])
        out = out.encode("utf-8").decode(enc2, errors="replace")
    if rng.random() < 0.25:
        out = out.replace("\u00a0", " ")
    return out


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "data", "umt5_corpus.jsonl")
    rng = random.Random(SEED)
    bmp, supplementary = assigned_code_points()
    groups = [WAN_PROMPTS, ENGLISH, CHINESE, JAPANESE, KOREAN, FULLWIDTH, QUOTES, HTML, EMOJI, CONTROL, LIGATURES,
              SPACES, MIXED, UMT5_TOKENS]
    corpus = [""]
    for group in groups:
        corpus.extend(group)
    pool = [s for g in groups for s in g]
    # The reference's documented examples, and each mojibake source in each encoding.
    corpus += ["âœ” No problems", "sÃ³", "voilÃ le travail", "Ã la mode", "fÃ cil", "â€œ like this â€�",
               "&ATILDE;&SUP3;", "Ã³", "ÃƒÂ©", "Ã©tÃ©", "â€™", "Ã¢â‚¬â„¢", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "Ã\xa0 la",
               "Ã¡ la", "mÃºsica", "tÃ©lÃ©phone", "Ã€ la", "Ø³Ù„Ø§Ù…", "Â£100", "Â©2024", "Ã—", "×²", "вЂ”", "Ð¨",
               "Ã¤Ã¶Ã¼", "ÃƒÆ’Ã‚Â©", "Ãƒ", "ï¿½", "\x1a sub", "caf\u00c3\x83\u00c2\u00a9"]
    for source in MOJIBAKE_SOURCES:
        for enc in MOJIBAKE_ENCODINGS:
            corpus.append(source.encode("utf-8").decode(enc, errors="replace"))
    for _ in range(300):
        text = " ".join(rng.choice(MOJIBAKE_SOURCES + pool[:40]) for _ in range(rng.randint(1, 4)))
        corpus.append(mojibake(rng, text))
        if rng.random() < 0.3:  # embedded in correct text
            corpus.append(rng.choice(CHINESE + ENGLISH) + " " + mojibake(rng, rng.choice(MOJIBAKE_SOURCES)))
    # Added tokens glued to text, spaces and each other.
    for token in UMT5_TOKENS[:12]:
        corpus += [f"before{token}after", f" {token} ", f"\n{token}\n", token * 3, f"\u3000{token}\u00a0"]
    # HTML entities in templates (with and without a '<', which turns ftfy's unescaping off).
    for _ in range(150):
        corpus.append(rng.choice(TEMPLATES).format(*[rng.choice(HTML + QUOTES + FULLWIDTH) for _ in range(2)]))
    # Lines: ftfy fixes line by line, and stops unescaping after the first line holding a '<'.
    for _ in range(100):
        corpus.append(rng.choice(["\n", "\r\n", "\r", "\u2028", "\x85"]).join(rng.choice(pool) for _ in range(rng.randint(2, 5))))
    # Space runs (the normalizer's " {2,}" and the cleaning's \s+).
    for n in range(1, 21):
        corpus += [" " * n + "x", "x" + " " * n, "x" + " " * n + "y", "x" + "\u00a0" * n + "y", "\t" * n + "z"]
    # Random mixes of everything above.
    for _ in range(900):
        parts = [rng.choice(pool) for _ in range(rng.randint(2, 8))]
        sep = rng.choice(["", " ", "\n", "  ", "\t", "\r\n", "\u3000", "，"])
        corpus.append(sep.join(parts))
    # Random Unicode across the planes.
    for _ in range(600):
        corpus.append(random_unicode(rng, bmp, supplementary, rng.randint(1, 40)))
    # Prompts longer than 512 tokens (truncation keeps </s> last), and long strings.
    corpus.append("".join(WAN_PROMPTS) * 3)
    corpus.append(" ".join(ENGLISH) * 12)
    corpus.append(" ".join(rng.choice(pool) for _ in range(400)))
    corpus.append("".join(CHINESE) * 20)
    corpus.append("a" * 3000)
    corpus.append("🎉" * 600)
    corpus.append(" " * 2000 + "end")
    corpus.append("word " * 700)
    corpus.append(random_unicode(rng, bmp, supplementary, 3000))
    corpus.append("\n".join(rng.choice(pool) for _ in range(300)))

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for s in corpus:
            # ASCII-only lines: a raw U+2028 or U+0085 would split a line for str.splitlines().
            f.write(json.dumps(s, ensure_ascii=True) + "\n")
    print(f"{out_path}: {len(corpus)} strings, {os.path.getsize(out_path)} bytes")


if __name__ == "__main__":
    main()
