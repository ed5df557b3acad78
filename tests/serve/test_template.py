"""Modelfile TEMPLATE: named templates, and the Go-template subset checked against text/chat.py's own
templates (the same conversation must render to the same bytes) and against Ollama's legacy form."""

from __future__ import annotations

import pytest

from pocketgpt.serve.template import GoTemplate, TemplateError, chat_template, check_template
from pocketgpt.text.chat import CHATML, PLAIN, POCKETGPT

pytestmark = pytest.mark.serve

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "周一上班真的很"}]

# Ollama's ChatML template as written in Modelfiles (whitespace trimmed with {{- -}})
CHATML_GO = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
# the legacy one-turn form Ollama applies turn by turn
POCKETGPT_LEGACY = ("{{ if .System }}<|system|>{{ .System }}<|end|>\n{{ end }}"
                    "{{ if .Prompt }}<|user|>{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>{{ .Response }}<|end|>\n")


def test_go_messages_template_matches_chatml():
    assert GoTemplate(CHATML_GO).render(CHAT) == CHATML.render(CHAT)


def test_legacy_template_turn_by_turn_matches_pocketgpt():
    assert GoTemplate(POCKETGPT_LEGACY).render(CHAT) == POCKETGPT.render(CHAT)
    one = [{"role": "user", "content": "你好"}]
    assert GoTemplate(POCKETGPT_LEGACY).render(one) == POCKETGPT.render(one)
    # without a generation prompt the last turn is closed, not cut
    assert GoTemplate(POCKETGPT_LEGACY).render(one, add_generation_prompt=False) == \
        "<|user|>你好<|end|>\n<|assistant|><|end|>\n"


def test_if_else_eq_and_root_fields():
    t = GoTemplate('{{- range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}'
                   '{{ else if eq .Role "assistant" }}A:{{ .Content }}{{ else }}[{{ $.System }}]{{ end }}\n'
                   "{{ end -}}\n  A:")
    assert t.render(CHAT) == "[Be brief.]\nU:hi\nA:hello\nU:周一上班真的很\nA:"
    assert GoTemplate("{{ if not .System }}none{{ else }}{{ .System }}{{ end }}").render(CHAT[1:2]) == "none"
    assert GoTemplate("{{/* a comment */}}{{ .Prompt }}").render(CHAT[1:2]) == "hi"


def test_encode_uses_special_tokens_and_stop_ids():
    from pocketgpt.text import specials
    from pocketgpt.text.bpe import Tokenizer

    tok = Tokenizer.train("hello world 你好 " * 20, 300, special_tokens=specials.RESERVED, progress=False)
    ids = GoTemplate(POCKETGPT_LEGACY).encode(tok, CHAT[1:2])
    assert ids == tok.encode("<|user|>hi<|end|>\n<|assistant|>", allowed_special="all")
    assert tok.special_tokens["<|user|>"] in ids
    assert GoTemplate(POCKETGPT_LEGACY).stop_ids(tok) == [tok.special_tokens["<|endoftext|>"]]


def test_named_and_default_templates():
    from pocketgpt.text import specials
    from pocketgpt.text.bpe import Tokenizer

    tok = Tokenizer.train("hello world " * 20, 280, special_tokens=specials.RESERVED, progress=False)
    assert chat_template(None, tok) is POCKETGPT  # what the tokenizer was made for
    assert chat_template("chatml", tok) is CHATML and chat_template(" plain ", tok) is PLAIN
    assert isinstance(chat_template(CHATML_GO, tok), GoTemplate)


@pytest.mark.parametrize(("source", "word"), [
    ("{{ if .System }}x", "never closed"),
    ("{{ end }}", "without a matching"),
    ("{{ range .Messages }}{{ .Content }}", "never closed"),
    ("{{ .Prompt | upper }}", "unsupported expression"),
    ("{{ .Nope }}", "no field .Nope"),
    ("{{ index .Messages 0 }}", "unsupported expression"),
    ("just words", "neither a template name"),
])
def test_errors(source, word):
    with pytest.raises(TemplateError, match=word):
        check_template(source)


def test_unclosed_action_is_refused_at_create_time():
    with pytest.raises(TemplateError, match="unclosed action at character 7"):
        check_template("Hello: {{ .Broken")
    check_template("{{ .Prompt }} and a literal }} is fine")  # Go allows a stray "}}" in text
