"""Answer parsers: pull the final answer out of a model's text, or None when there is none.

    parse_math("5 + 7 = 12 apples. #### 12")          -> "12"
    parse_math("The answer is not 5, it is 7.")        -> "7"
    parse_nli("It does not contradict; entailment.")   -> "entailment"
    parse_choice("I pick (C) because ...")             -> "C"
    parse_marked("Thinking... Summary: a short one", "Summary:") -> "a short one"

Each parser looks first at the span after an answer marker (``####``, ``\\boxed{}``, ``Answer:``, "the answer
is"), drops negated candidates ("not 5", "isn't a contradiction") and takes the first one left. Without a marker
it accepts a bare answer only (math: the text is just a number), so numbers in the reasoning are never mistaken
for the answer.
"""

from __future__ import annotations

import re
import string

# -------------------------------------------------------------------------------------------- shared
_BOLD = re.compile(r"[*_`]+")
_MARKERS = re.compile(
    r"\b(?:final\s+answer|answer|result|label|prediction)\s*(?:is|=|:|would\s+be|will\s+be)\s*:?",
    re.IGNORECASE,
)
_NEGATION = r"(?:not|isn't|is\s+not|never|rather\s+than|instead\s+of|n't)\s+(?:an?\s+|the\s+|be\s+|equal\s+to\s+)?"


def normalize_text(s: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _first_sentence(span: str) -> str:
    """The span up to the end of its line or sentence (a period followed by space, not a decimal point)."""
    span = span.split("\n", 1)[0]
    return re.split(r"(?<=[.!?;])\s+(?=[A-Z])", span, maxsplit=1)[0]


def answer_span(text: str) -> str | None:
    """The text after the last answer marker (its first sentence), or None when the text has no marker."""
    clean = _BOLD.sub("", text)
    found = list(_MARKERS.finditer(clean))
    if not found:
        return None
    return _first_sentence(clean[found[-1].end() :].strip())


# -------------------------------------------------------------------------------------------- math
_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_NUMBER = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_SIGNED = rf"(?<![\w.])(?:[-−]\s?)?\$?\s?(?:[-−]\s?)?{_NUMBER}(?:\s*/\s*{_NUMBER})?%?"
_NUM_RE = re.compile(_SIGNED)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


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


def parse_math(text: str) -> str | None:
    """The final numeric answer: '#### N' (GSM8K), '\\boxed{N}', 'Answer: N' / 'the answer is N', else a bare N."""
    if "####" in text:
        return _number_in(_first_sentence(text.rsplit("####", 1)[1].strip()))
    boxed = _boxed(text)
    if boxed is not None:
        return _number_in(boxed)
    span = answer_span(text)
    if span is not None:
        return _number_in(span)
    bare = _BOLD.sub("", text).strip().rstrip(".")
    m = _NUM_RE.fullmatch(_FRAC.sub(r"\1/\2", bare.replace("\\$", "$")))
    return _number_in(bare) if m else None


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
NLI_INDEX = {"0": "entailment", "1": "neutral", "2": "contradiction"}  # SNLI / MNLI label ids


def _nli_label(word: str) -> str:
    w = word.lower()
    return "entailment" if w.startswith("entail") else "contradiction" if w.startswith("contradict") else "neutral"


def parse_nli(text: str) -> str | None:
    """entailment | neutral | contradiction: the first label after an answer marker, else the last one mentioned."""
    span = answer_span(text)
    where = span if span is not None and _NLI_WORD.search(span) else _BOLD.sub("", text)
    words = _NLI_WORD.findall(_NLI_NEG.sub(" ", where))
    if not words:
        return None
    return _nli_label(words[0] if where is span else words[-1])


# -------------------------------------------------------------------------------------------- choices
LETTERS = "ABCDEFGHIJ"
_LETTER = rf"[{LETTERS}]"
_CHOICE_AT_START = re.compile(rf"^\(?({_LETTER})(?:[).:]|\s*$)", re.MULTILINE)
_CHOICE_ANYWHERE = re.compile(rf"(?:\(({_LETTER})\)|\b(?:option|choice)\s+\(?({_LETTER})\b)", re.IGNORECASE)


def parse_choice(text: str) -> str | None:
    """A multiple-choice letter (A-J): after an answer marker, a lone '(C)' / 'C)' / 'C.' / 'C', or 'option C'."""
    clean = _BOLD.sub("", text).strip()
    span = answer_span(clean)
    if span is not None:
        span = re.sub(_NEGATION + rf"\(?{_LETTER}\)?(?![\w])", " ", span)
        m = re.search(rf"(?:^|[\s(])\(?({_LETTER})(?:$|[).:,\s])", span)
        if m:  # upper case only: "Answer: a dog" never reads as a letter
            return m.group(1)
    m = _CHOICE_AT_START.match(clean)
    if m:
        return m.group(1)
    hits = [a or b for a, b in _CHOICE_ANYWHERE.findall(clean)]
    return hits[-1].upper() if hits else None


def is_choice(s: str | None) -> bool:
    return s is not None and len(s) == 1 and s in LETTERS


# -------------------------------------------------------------------------------------------- free text
def parse_marked(text: str, marker: str = "Answer:") -> str | None:
    """Text after the last ``marker`` (case-insensitive), else the whole text; None when empty."""
    at = text.lower().rfind(marker.lower())
    out = text[at + len(marker) :] if at >= 0 else text
    out = out.strip()
    return out or None


def rationale_of(text: str, marker: str) -> str:
    """The reasoning before the last answer marker ('' when there is no marker)."""
    at = text.lower().rfind(marker.lower())
    return text[:at].strip() if at >= 0 else ""
