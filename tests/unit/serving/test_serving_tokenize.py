"""The gateway tokenizes prompts itself with the checkpoint's tokenizer and chat template (one
handle call saved per request), exactly as the model deployment would; where it cannot read the
checkpoint it asks the deployment every time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from frugalserve.serving.clients import HandleClient, Prepared, load_tokenizer, tokenize
from frugalserve.serving.engine.tokenizer import Tokenizer
from tests.unit.serving.conftest import model

pytestmark = pytest.mark.unit
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


class Method:
    """A deployment method behind a fake handle: `.remote(...)` awaits it, counting calls."""

    def __init__(self, fn: Callable[..., Prepared]) -> None:
        self.fn, self.calls = fn, 0

    async def remote(self, *args: Any) -> Prepared:
        self.calls += 1
        return self.fn(*args)


class FakeHandle:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.prepare = Method(lambda m, p: tokenize(tokenizer, 512, m, p))

    def options(self, **_: object) -> FakeHandle:
        return self


def dense_tokenizer() -> Tokenizer:
    tok = load_tokenizer(model("dense").model_copy(update={"source": "builtin://tiny-dense"}))
    assert tok is not None
    return tok


async def test_gateway_tokens_equal_the_deployments_and_skip_the_handle() -> None:
    tok = dense_tokenizer()
    handle = FakeHandle(tok)
    client = HandleClient(handle, tok)
    first = await client.prepare(CHAT, None)  # learns the context limit from the deployment
    again = await client.prepare(CHAT, None)
    text = await client.prepare(None, "The quick brown fox")
    assert handle.prepare.calls == 1
    assert first == again == Prepared(tok.encode(tok.apply_chat_template(CHAT)), 512)
    assert text == tokenize(tok, 512, None, "The quick brown fox")


async def test_without_a_readable_checkpoint_the_deployment_tokenizes(tmp_path: Any) -> None:
    missing = model("dense").model_copy(update={"source": f"file://{tmp_path}/absent"})
    assert load_tokenizer(missing) is None
    handle = FakeHandle(dense_tokenizer())
    client = HandleClient(handle, None)
    await client.prepare(CHAT, None)
    await client.prepare(None, "hi")
    assert handle.prepare.calls == 2
