"""An Ollama ``Modelfile`` for a GGUF export, its TEMPLATE derived from the student's own chat template.

    modelfile(tokenizer, "./model.gguf")   # -> the text: FROM, TEMPLATE, PARAMETER stop ..., temperature 0

Ollama's templates are Go templates, the tokenizer's are Jinja. The Jinja template is rendered with marker
messages (a system, a user and an assistant turn, and the generation prompt), and the text around each marker
becomes that role's prefix and suffix in a Go ``range .Messages`` loop. A template whose turns depend on each other
(so that the per-role pieces do not add up to the full rendering) gets no TEMPLATE line, and a comment says so:
Ollama then reads the template stored in the GGUF file where it recognises it.
"""

from __future__ import annotations

from typing import Any

from ..decode import stop_token_ids

_MARK = {"system": "\x01SYSTEM\x01", "user": "\x01USER\x01", "assistant": "\x01ASSISTANT\x01"}


def _render(tok: Any, messages: list[dict[str, str]], prompt: bool) -> str:
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt))


def _roles(tok: Any) -> tuple[dict[str, tuple[str, str]], str] | None:
    """Per role (prefix, suffix), and the generation prompt; None when the template is not per-turn."""
    pieces: dict[str, tuple[str, str]] = {}
    try:
        for role, mark in _MARK.items():
            text = _render(tok, [{"role": role, "content": mark}], prompt=False)
            before, found, after = text.partition(mark)
            if not found:
                return None
            pieces[role] = (before, after)
        user = [{"role": "user", "content": _MARK["user"]}]
        with_prompt, without = _render(tok, user, prompt=True), _render(tok, user, prompt=False)
        full = _render(
            tok,
            [{"role": r, "content": m} for r, m in _MARK.items()] + [{"role": "user", "content": _MARK["user"]}],
            prompt=True,
        )
    except Exception:  # a template that refuses lone turns (e.g. must start with a user turn)
        return None
    if not with_prompt.startswith(without):
        return None
    gen = with_prompt[len(without) :]
    order = [*_MARK, "user"]
    if full != "".join(pieces[r][0] + _MARK[r] + pieces[r][1] for r in order) + gen:
        return None
    return pieces, gen


def _go(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def go_template(tok: Any) -> str | None:
    """The chat template as an Ollama (Go) template, or None when it cannot be derived per turn."""
    found = _roles(tok)
    if found is None:
        return None
    pieces, gen = found
    branches = []
    for n, role in enumerate(_MARK):
        before, after = pieces[role]
        head = "{{ if" if n == 0 else "{{ else if"  # no "{{-": it would trim the newline a turn ends with
        branches.append(f'{head} eq .Role "{role}" }}}}{_go(before)}{{{{ .Content }}}}{_go(after)}')
    return "{{ range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + _go(gen)


def modelfile(tok: Any, gguf_path: str) -> str:
    lines = ["# Ollama: ollama create student -f Modelfile && ollama run student", f"FROM {gguf_path}"]
    template = go_template(tok)
    if template is None:
        lines.append("# no TEMPLATE: the chat template's turns depend on each other; Ollama reads the GGUF's own")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    for t in stop_token_ids(tok):
        text = tok.convert_ids_to_tokens(int(t))
        if text:
            lines.append(f'PARAMETER stop "{text}"')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
