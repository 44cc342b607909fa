"""Tokenizer and chat template of a checkpoint, plus the small byte-level BPE of builtin models.

The loader builds a `Tokenizer` from `tokenizer.json` / `tokenizer_config.json`; the engine
uses it to encode prompts, detokenize streams and render chat messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2.sandbox
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama checkpoints

# Template used when a checkpoint ships none (and written into builtin checkpoints).
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A platform team deploys models on GPU clusters
and every token has a cost. Tenants send prompts; the gateway counts prompt tokens and
completion tokens, reserves the worst case, and settles the actual cost once. Hello, world!
What is the price of one million tokens? It depends on the GPU hour and the throughput.
user assistant system: you are a helpful assistant. 0123456789 + - * / = ( ) [ ] { } < > | #
"""


def build_byte_bpe(vocab_size: int) -> HFTokenizer:
    """Deterministic byte-level BPE trained on a small embedded corpus (covers every byte)."""
    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


class Tokenizer:
    """Text <-> ids through `tokenizers`, and chat rendering through the checkpoint's template."""

    def __init__(self, tok: HFTokenizer, chat_template: str | None,
                 special: dict[str, str]) -> None:
        self._tok = tok
        self.chat_template = chat_template
        self._special = special
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(chat_template or DEFAULT_CHAT_TEMPLATE)

    @classmethod
    def from_dir(cls, path: Path) -> Tokenizer:
        """Read `tokenizer.json`, and `tokenizer_config.json` / `chat_template.jinja` if present."""
        tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        special = {k: _token_text(config[k]) for k in ("bos_token", "eos_token") if config.get(k)}
        return cls(tok, template, special)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     bos_token=self._special.get("bos_token", ""),
                                     eos_token=self._special.get("eos_token", ""))


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template: {message}")


def _token_text(value: str | dict[str, str]) -> str:
    return value if isinstance(value, str) else value.get("content", "")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
