"""Answer parsers: pull the final answer out of a model's text, or None when there is none.

    parse_math("5 + 7 = 12 apples. #### 12")          -> "12"
    parse_math("The answer is not 5, it is 7.")        -> "7"
    parse_nli("It does not contradict; entailment.")   -> "entailment"
    parse_choice("I pick (C) because ...")             -> "C"
    parse_marked("Thinking... Summary: a short one", "Summary:") -> "a short one"

Each parser reads the text after a closing ``</think>`` (a reasoning model's answer, not its thoughts). It looks
first at the span after an answer marker (``####``, ``\\boxed{}``, ``Answer:``, "the answer is", ``A:`` opening a
line, a ``Final Answer`` heading), drops negated candidates ("not 5", "isn't a contradiction") and takes the first
one left. Without a marker it accepts only what the text sets apart as its answer: a bare answer (the whole text),
and for math a last line that puts one number in bold (``**18**``) or ends ``= 18``; for NLI a line holding only a
label. So numbers in the reasoning are never mistaken for the answer ("so the total is 18 apples." -> None).
"""

from __future__ import annotations

import re
import string

# -------------------------------------------------------------------------------------------- shared
_BOLD = re.compile(r"[*_`]+")
_MARKERS = re.compile(
    r"\b(?:final\s+answer|answer|result|label|prediction)\s*(?:is|=|:|would\s+be|will\s+be|should\s+be)\s*:?"
    r"|(?P<qa>^[ \t>]*(?-i:A)[ \t]*:)"  # 'Q: ... \nA: 18' (unless lines 'A: ... B: ...' list options)
    r"|^[ \t>#]*final\s+answer[ \t]*:?[ \t]*$",  # a 'Final Answer' heading, the answer on the lines below
    re.IGNORECASE | re.MULTILINE,
)
_OPTION_B = re.compile(r"^[ \t>]*B[ \t]*:", re.MULTILINE)
_NEGATION = r"(?:not|isn't|is\s+not|never|rather\s+than|instead\s+of|n't)\s+(?:an?\s+|the\s+|be\s+|equal\s+to\s+)?"


def normalize_text(s: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def final_text(text: str) -> str:
    """The answer part of a reasoning model's output: after the last ``</think>``; '' while a thought is open."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    return text.split("<think>", 1)[0] if "<think>" in text else text


def _first_sentence(span: str) -> str:
    """The span up to the end of its line or sentence (a period followed by space, not a decimal point)."""
    span = span.split("\n", 1)[0]
    return re.split(r"(?<=[.!?;])\s+(?=[A-Z])", span, maxsplit=1)[0]


def answer_span(text: str) -> str | None:
    """The text after the last answer marker (its first sentence), or None when the text has no marker."""
    clean = _BOLD.sub("", text)
    found = list(_MARKERS.finditer(clean))
    if _OPTION_B.search(clean):
        found = [m for m in found if m.group("qa") is None]
    if not found:
        return None
    return _first_sentence(clean[found[-1].end() :].strip())


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -------------------------------------------------------------------------------------------- math
_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_NUMBER = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_SIGNED = rf"(?<![\w.])(?:[-−]\s?)?\$?\s?(?:[-−]\s?)?{_NUMBER}(?:\s*/\s*{_NUMBER})?%?"
_NUM_RE = re.compile(_SIGNED)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_GSM8K = re.compile(r"####[ \t]*(?=[-−$\\\d.])")  # '#### 72', not a markdown heading '#### Step 2'
_LATEX_DELIMS = re.compile(r"\\[()\[\]]")
_COUNTER = re.compile(r"^\W*(?:step|part|case|method|question|problem|example)\s+\d", re.IGNORECASE)  # '**Step 3**'
_IS_THE_ANSWER = re.compile(rf"({_SIGNED})\s+is\s+(?:the|my|our)\s+(?:final\s+|correct\s+)?answer\b", re.IGNORECASE)


def to_number(s: str) -> float | None:
    """'$1,250.50' -> 1250.5, '-3/4' -> -0.75, '50%' -> 50.0, '−2' -> -2.0; None when not a number."""
    s = s.strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip("%").rstrip(".")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def canon_number(value: float) -> str:
    """One spelling per value: integers without a decimal point, others with up to 10 significant digits."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces matched."""
    at = text.rfind("\\boxed")
    if at < 0:
        return None
    i = text.find("{", at)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _number_in(span: str) -> str | None:
    span = _FRAC.sub(r"\1/\2", span.replace("\\$", "$").replace("\\!", "").replace("\\,", ","))
    if "=" in span:  # "x = 72", "8 × 9 = 72": the value is on the right of the last '='
        span = span.rsplit("=", 1)[1]
    span = re.sub(_NEGATION + rf"{_SIGNED}", " ", span, flags=re.IGNORECASE)
    m = _NUM_RE.search(span)
    if not m:
        return None
    v = to_number(m.group(0))
    return None if v is None else canon_number(v)


def _bare_number(s: str, units: int = 0) -> str | None:
    """The number when ``s`` is one number and nothing else ('**18**', '$18$', '\\(18\\)', '18.'), up to
    ``units`` words after it ('18 apples'); else None."""
    s = _LATEX_DELIMS.sub("", _FRAC.sub(r"\1/\2", _BOLD.sub("", s).replace("\\$", "$"))).strip().rstrip(".").strip()
    if len(s) > 1 and s.startswith("$") and s.endswith("$"):  # $18$, $$18$$ (a leading '$' alone is money)
        s = s.strip("$").strip()
    s = s.removesuffix("$").strip()
    m = re.fullmatch(rf"({_SIGNED})(?:\s+[^\W\d]+){{0,{units}}}", s)
    return _number_in(m.group(1)) if m else None


def _last_line_number(text: str) -> str | None:
    """A last line that states the result: '**18**', 'She has **18** apples.', '5 + 13 = 18', '18 is the answer'."""
    last = _last_line(text)
    bold = re.findall(r"\*\*(.+?)\*\*", last)
    if bold and len(_NUM_RE.findall(_FRAC.sub(r"\1/\2", bold[-1]))) == 1 and not _COUNTER.match(bold[-1]):
        return _number_in(bold[-1])
    plain = _BOLD.sub("", last)
    if "=" in plain and (got := _bare_number(plain.rsplit("=", 1)[1], units=2)) is not None:
        return got
    said = list(_IS_THE_ANSWER.finditer(plain))
    return _number_in(said[-1].group(1)) if said else None


def parse_math(text: str) -> str | None:
    """The final numeric answer: '#### N' (GSM8K), '\\boxed{N}', 'Answer: N' / 'the answer is N' / 'A: N', a last
    line '**N**' or '... = N', else a bare N."""
    text = final_text(text)
    gsm = list(_GSM8K.finditer(text))
    if gsm and (got := _number_in(_first_sentence(text[gsm[-1].end() :].strip()))) is not None:
        return got
    boxed = _boxed(text)
    if boxed is not None:
        return _number_in(boxed)
    span = answer_span(text)
    if span is not None:
        return _number_in(span)
    return _bare_number(text) or _last_line_number(text)


def number_in_span(span: str) -> str | None:
    """The number a job's own answer span holds (prompts.answer_marker, a parse pattern's group): the one boxed in
    its first paragraph, else the first on its first line ('18 apples, after 3 were eaten' -> 18)."""
    head = _BOLD.sub("", span).strip().split("\n\n", 1)[0]
    boxed = _boxed(head)
    return _number_in(boxed if boxed is not None else _first_sentence(head))


def numbers_match(pred: str | None, ref: str | None, rel_tol: float = 1e-6) -> bool:
    """Numeric comparison with a relative tolerance (absolute below 1)."""
    if pred is None or ref is None:
        return False
    a, b = to_number(pred), to_number(ref)
    return a is not None and b is not None and abs(a - b) <= rel_tol * max(1.0, abs(b))


# -------------------------------------------------------------------------------------------- NLI
NLI_LABELS = ("entailment", "neutral", "contradiction")
_NLI_WORD = re.compile(r"\b(entail\w*|contradict\w*|neutral)\b", re.IGNORECASE)
_NLI_NEG = re.compile(_NEGATION + r"(?:\w+\s+)?(?:entail\w*|contradict\w*|neutral)\b", re.IGNORECASE)
_NLI_LINE = re.compile(r"^[\s>#*_`(\[]*(entail\w*|contradict\w*|neutral)[\s*_`.!)\]]*$", re.IGNORECASE | re.MULTILINE)
NLI_INDEX = {"0": "entailment", "1": "neutral", "2": "contradiction"}  # SNLI / MNLI label ids


def _nli_label(word: str) -> str:
    w = word.lower()
    return "entailment" if w.startswith("entail") else "contradiction" if w.startswith("contradict") else "neutral"


def nli_in_span(span: str) -> str | None:
    """The first label a span names that is not negated ('entailment (not contradiction)' -> entailment)."""
    words = _NLI_WORD.findall(_NLI_NEG.sub(" ", _BOLD.sub("", span)))
    return _nli_label(words[0]) if words else None


def parse_nli(text: str) -> str | None:
    """entailment | neutral | contradiction: the first label after an answer marker, else a line holding only a
    label ('**Neutral**'), else the last one mentioned."""
    text = final_text(text)
    span = answer_span(text)
    if span is not None and _NLI_WORD.search(span):
        return nli_in_span(span)
    lone = _NLI_LINE.findall(text)
    if lone:
        return _nli_label(lone[-1])
    words = _NLI_WORD.findall(_NLI_NEG.sub(" ", _BOLD.sub("", text)))
    return _nli_label(words[-1]) if words else None


# -------------------------------------------------------------------------------------------- choices
LETTERS = "ABCDEFGHIJ"
_LETTER = rf"[{LETTERS}]"
_CHOICE_AT_START = re.compile(rf"^\(?({_LETTER})(?:[).:]|\s*$)", re.MULTILINE)
_CHOICE_ANYWHERE = re.compile(rf"(?:\(({_LETTER})\)|\b(?:option|choice)\s+\(?({_LETTER})\b)", re.IGNORECASE)
_CHOICE_SAID = re.compile(  # upper case only: 'the best choice is B', 'B is correct' (never 'is a dog')
    rf"\b(?:option|choice)\s+is\s+\(?({_LETTER})\b(?![’'])|(?:^|(?<=[\s(]))\(?({_LETTER})\)?\s+is\s+(?:the\s+)?"
    r"(?:correct|right|best)\b"
)


def parse_choice(text: str) -> str | None:
    """A multiple-choice letter (A-J): after an answer marker, a lone '(C)' / 'C)' / 'C.' / 'C', 'option C',
    'the best choice is C' or 'C is correct'."""
    clean = _BOLD.sub("", final_text(text)).strip()
    span = answer_span(clean)
    if span is not None:
        span = re.sub(_NEGATION + rf"\(?{_LETTER}\)?(?![\w])", " ", span)
        m = re.search(rf"(?:^|[\s(])\(?({_LETTER})(?:$|[).:,\s])", span)
        if m:  # upper case only: "Answer: a dog" never reads as a letter
            return m.group(1)
    m = _CHOICE_AT_START.match(clean)
    if m:
        return m.group(1)
    said = (_CHOICE_ANYWHERE, _CHOICE_SAID)
    hits = [(h.start(), h.group(1) or h.group(2)) for rx in said for h in rx.finditer(clean)]
    return max(hits)[1].upper() if hits else None  # the last one said


def is_choice(s: str | None) -> bool:
    return s is not None and len(s) == 1 and s in LETTERS


# -------------------------------------------------------------------------------------------- free text
def parse_marked(text: str, marker: str = "Answer:") -> str | None:
    """Text after the last ``marker`` (case-insensitive), else the whole text; None when empty."""
    text = final_text(text)
    at = text.lower().rfind(marker.lower())
    out = text[at + len(marker) :] if at >= 0 else text
    out = out.strip()
    return out or None


def rationale_of(text: str, marker: str) -> str:
    """The reasoning before the last answer marker ('' when there is no marker)."""
    at = text.lower().rfind(marker.lower())
    return text[:at].strip() if at >= 0 else ""
