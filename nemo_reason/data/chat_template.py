"""Chat templates: a conversation -> text segments, each marked trained (assistant) or not.

=========  ====================================================================================
name       what
=========  ====================================================================================
chatml     ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message (Qwen/ChatML layout)
plain      ``{Role}: {content}\\n\\n`` per message (``System``, ``User``, ``Assistant``)
qa         the bundled math prompt: user ``Question: {content}\\nSolution:``, assistant `` {content}``
hf         the Jinja ``chat_template`` of a Hugging Face tokenizer's ``tokenizer_config.json``
=========  ====================================================================================

The built-in templates are rendered as *plain text*: the byte-level and bundled BPE tokenizers
have no special chat tokens, so ``<|im_start|>`` becomes its bytes (ten or so tokens), and the
tokenizer's ``eod`` is appended after the last assistant turn (trained, so the model learns to
stop). Under ``chatml`` the trained part of an assistant turn is ``{content}<|im_end|>\\n``; the
``<|im_start|>assistant\\n`` header is not trained.

``qa`` renders a conversation exactly as the evaluation and the ``grpo`` step prompt a math
problem (``DOMAINS["math"].template`` of :mod:`nemo_reason.evaluation.tasks`, ``Question: {question}
\\nSolution:``): a user turn is that prompt, untrained; the assistant turn is `` {content}``,
trained, and the eod follows it. A bundled math record becomes the text the pretraining reads
(``Question: ...\\nSolution: ...\\nAnswer: N``), so SFT trains exactly the completion a rollout
samples. A system message is its content and a blank line, untrained; a later turn starts on a
new line.

``hf`` renders with jinja2 the way ``transformers`` does (sandboxed, ``trim_blocks`` and
``lstrip_blocks``; ``messages``, ``add_generation_prompt``, the special tokens of the config,
``raise_exception``). The assistant's part is found by prefix rendering: for message ``i`` the
text of ``messages[:i]`` with ``add_generation_prompt=True`` is the untrained header, the rest of
the text of ``messages[:i+1]`` is trained. A template that renders a prefix differently from the
whole conversation (one that drops earlier reasoning, say) is refused with a ConfigError. The
eod is appended only when the template does not already write the tokenizer's eos token.

Left out: tool calls and tool roles, multimodal content, HF's ``{% generation %}`` markers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from nemo_reason.config.errors import ConfigError
from nemo_reason.registry import Registry

ROLES = ("system", "user", "assistant")
# A rendered conversation: (text, trained) pieces in order; trained pieces are the assistant's.
Segments = List[Tuple[str, bool]]


class ChatTemplate:
    """``segments(messages)``: the conversation as (text, trained) pieces; ``needs_eod(segments)``:
    whether the tokenizer's eod must follow the last assistant turn; ``generation_prompt(messages)``:
    the text a model continues to answer (for rollouts)."""

    def needs_eod(self, segments: Segments) -> bool:
        return True

    def segments(self, messages: Sequence[Dict[str, str]]) -> Segments:
        raise NotImplementedError

    def generation_prompt(self, messages: Sequence[Dict[str, str]]) -> str:
        raise NotImplementedError

    def render(self, messages: Sequence[Dict[str, str]]) -> str:
        return "".join(t for t, _ in self.segments(messages))


CHAT_TEMPLATES: Registry = Registry("chat template")


class _Builtin(ChatTemplate):
    header: Callable[[str], str]
    footer: str

    def segments(self, messages):
        out: Segments = []
        for m in messages:
            if m["role"] == "assistant":
                out += [(self.header(m["role"]), False), (m["content"] + self.footer, True)]
            else:
                out.append((self.header(m["role"]) + m["content"] + self.footer, False))
        return out

    def generation_prompt(self, messages):
        return "".join(t for t, _ in self.segments(messages)) + self.header("assistant")


@CHAT_TEMPLATES.register("chatml", "<|im_start|>role\\ncontent<|im_end|>\\n, as plain text")
class ChatMLTemplate(_Builtin):
    footer = "<|im_end|>\n"

    @staticmethod
    def header(role: str) -> str:
        return f"<|im_start|>{role}\n"


@CHAT_TEMPLATES.register("plain", "Role: content, a blank line between turns")
class PlainTemplate(_Builtin):
    footer = "\n\n"

    @staticmethod
    def header(role: str) -> str:
        return f"{role.capitalize()}: "


@CHAT_TEMPLATES.register("qa", "the math eval/GRPO prompt: Question: user\\nSolution: assistant")
class QATemplate(ChatTemplate):
    """User turns in the math evaluation prompt, assistant turns as its continuation."""

    @staticmethod
    def _user(content: str) -> str:
        from nemo_reason.evaluation.tasks import DOMAINS, render_prompt

        return render_prompt(DOMAINS["math"].template, {"question": content}, "qa chat template")

    def segments(self, messages):
        out: Segments = []
        for i, m in enumerate(messages):
            sep = "\n" if i and messages[i - 1]["role"] == "assistant" else ""
            if m["role"] == "assistant":
                out.append((" " + m["content"], True))
            elif m["role"] == "system":
                out.append((sep + m["content"] + "\n\n", False))
            else:
                out.append((sep + self._user(m["content"]), False))
        return out

    def generation_prompt(self, messages):
        return self.render(messages)


def _special(cfg: dict, key: str) -> str:
    val = cfg.get(key)
    val = val.get("content") if isinstance(val, dict) else val
    return val or ""


@CHAT_TEMPLATES.register("hf", "the Jinja chat_template of a Hugging Face tokenizer_config.json")
class JinjaTemplate(ChatTemplate):
    """A Hugging Face Jinja chat template, rendered as ``transformers.apply_chat_template`` does."""

    def __init__(self, source: str, special_tokens: Optional[Dict[str, str]] = None, origin: str = "chat_template"):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        self.origin = origin
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"{origin}: the chat template does not parse ({exc}); fix it or use "
                              "template='chatml'") from None
        self.special = dict(special_tokens or {})
        self._eos = self.special.get("eos_token", "")

    @classmethod
    def from_tokenizer_config(cls, path: str | Path) -> "JinjaTemplate":
        """The ``chat_template`` of ``tokenizer_config.json`` (the file, or the folder holding it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer_config.json"
        if not p.is_file():
            raise ConfigError(f"{path}: no tokenizer_config.json, so no chat template: use template='chatml'")
        cfg = json.loads(p.read_text())
        source = cfg.get("chat_template")
        if isinstance(source, list):  # several named templates: the "default" one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if not source:
            raise ConfigError(f"{p}: has no chat_template; use template='chatml' (or add one)")
        specials = {k: _special(cfg, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(source, specials, origin=str(p))

    def _render(self, messages, add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         **self.special)
        except TemplateError as exc:
            raise ConfigError(f"{self.origin}: the chat template refused a conversation ({exc})") from None

    def segments(self, messages):
        out: Segments = []
        done = ""
        for i, m in enumerate(messages):
            full = self._render(messages[:i + 1], False)
            if m["role"] == "assistant":
                head = self._render(messages[:i], True)
                if not head.startswith(done) or not full.startswith(head):
                    raise self._not_prefix(i)
                out += [(head[len(done):], False), (full[len(head):], True)]
            else:
                if not full.startswith(done):
                    raise self._not_prefix(i)
                out.append((full[len(done):], False))
            done = full
        return [(t, k) for t, k in out if t]

    def needs_eod(self, segments: Segments) -> bool:
        return not (self._eos and any(self._eos in t for t, trained in segments if trained))

    def _not_prefix(self, i: int) -> ConfigError:
        return ConfigError(f"{self.origin}: the chat template renders the first {i} messages differently from "
                           "the whole conversation (it rewrites earlier turns), so the assistant's tokens cannot "
                           "be located; use template='chatml' or a template whose prefixes are stable")

    def generation_prompt(self, messages):
        return self._render(messages, True)


def build_chat_template(name: str = "auto", tokenizer=None) -> ChatTemplate:
    """``chatml``/``plain``/``qa``; ``hf`` (the tokenizer's config must hold a ``chat_template``); ``auto``:
    the hf tokenizer's own template when its config has one, else ``chatml``."""
    config = _tokenizer_config(tokenizer)
    if name == "auto":
        has = config is not None and bool(json.loads(config.read_text()).get("chat_template"))
        name = "hf" if has else "chatml"
    if name == "hf":
        if config is None:
            raise ConfigError("template='hf' needs an hf tokenizer with a tokenizer_config.json beside its "
                              "tokenizer.json; use template='chatml' for the byte or bundled tokenizers")
        return JinjaTemplate.from_tokenizer_config(config)
    return CHAT_TEMPLATES.get(name)()


def _tokenizer_config(tokenizer) -> Optional[Path]:
    from nemo_reason.data.tokenizer import HFTokenizer, tokenizer_json

    if not isinstance(tokenizer, HFTokenizer):
        return None
    p = tokenizer_json(tokenizer.path).parent / "tokenizer_config.json"
    return p if p.is_file() else None
