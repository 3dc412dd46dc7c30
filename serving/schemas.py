"""Request bodies: parsed from JSON by hand (so that malformed JSON is a 400 that says so) and
checked by pydantic in strict mode (a string is not a number, 5.0 is not an integer), then
against the server's limits. Every refusal names the field (`param`)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from compressive_rt.runtime.json_depth import nesting_depth
from compressive_rt.runtime.sampling import MIN_TEMPERATURE, Sampling
from compressive_rt.runtime.scheduler import BYTE_VOCAB
from compressive_rt.serving.errors import ApiError, bad_request
from compressive_rt.serving.jobs import GenerationParams
from compressive_rt.serving.settings import ServeSettings

MAX_PROMPTS = 32  # prompts (choices) in one completion request
MAX_STOPS = 4  # as OpenAI
SEED_MODULUS = 1 << 64


class _Body(BaseModel):
    # fields OpenAI clients send that this server does not use are ignored
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class GenerationFields(_Body):
    """The sampling fields of /v1/completions and /v1/streams/{id}/generate (None: default)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # an extension: keep the k most likely tokens (0: off)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None

    def params(self, settings: ServeSettings) -> GenerationParams:
        """Checked against OpenAI's ranges and this server's limits."""
        for name, value, default in (("n", self.n, 1), ("best_of", self.best_of, 1),
                                     ("echo", self.echo, False), ("logprobs", self.logprobs, None),
                                     ("presence_penalty", self.presence_penalty, 0),
                                     ("frequency_penalty", self.frequency_penalty, 0)):
            if value is not None and value != default:
                raise bad_request(f"{name}={value!r} is not supported by this server "
                                  f"(only {default!r})", name)
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream: true",
                              "stream_options")
        if self.suffix:
            raise bad_request("suffix is not supported by this server", "suffix")
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")
        max_tokens = 16 if self.max_tokens is None else self.max_tokens
        if not 1 <= max_tokens <= settings.max_tokens_limit:
            raise bad_request(f"max_tokens must be in [1, {settings.max_tokens_limit}] (this "
                              f"server's --max-tokens), got {max_tokens}", "max_tokens")
        temperature = 1.0 if self.temperature is None else self.temperature
        if not 0 <= temperature <= 2:
            raise bad_request(f"temperature must be in [0, 2] (below {MIN_TEMPERATURE:g}: "
                              f"greedy), got {temperature}", "temperature")
        top_p = 1.0 if self.top_p is None else self.top_p
        if not 0 < top_p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
        top_k = self.top_k or 0
        if top_k < 0:
            raise bad_request(f"top_k must be >= 0 (0: off), got {top_k}", "top_k")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise bad_request(f"stop holds {len(stops)} sequences; at most {MAX_STOPS}", "stop")
        seed = None if self.seed is None else self.seed % SEED_MODULUS
        sampling = Sampling(greedy=True, seed=seed) if temperature < MIN_TEMPERATURE else \
            Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return GenerationParams(max_tokens, sampling,
                                tuple(utf8(stop, "stop") for stop in stops if stop))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(GenerationFields):
    # as OpenAI's and vLLM's: a string, a list of strings, token ids, or a list of token ids
    prompt: str | list[str] | list[int] | list[list[int]]

    def prompt_tokens(self, settings: ServeSettings) -> list[np.ndarray]:
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt:
            raise bad_request("prompt is an empty list: give a string, a list of strings, "
                              "token ids or a list of token ids", "prompt")
        if len(prompt) > MAX_PROMPTS:
            raise bad_request(f"prompt holds {len(prompt)} prompts; at most {MAX_PROMPTS}",
                              "prompt")
        many = prompt is self.prompt  # a list of prompts: errors name prompt[i]
        return [encode_prompt(one, settings, allow_empty=False) if isinstance(one, str)
                else token_prompt(one, settings, f"prompt[{index}]" if many else "prompt")
                for index, one in enumerate(prompt)]


class StreamGenerateBody(GenerationFields):
    prompt: str = ""  # may be empty once the stream has been fed: it continues its history

    def prompt_array(self, settings: ServeSettings) -> np.ndarray:
        return encode_prompt(self.prompt, settings, allow_empty=True)


class AppendBody(_Body):
    text: str

    def tokens(self) -> np.ndarray:
        if not self.text:
            raise bad_request("text is empty: give the text to append", "text")
        return np.frombuffer(utf8(self.text, "text"), dtype=np.uint8).astype(np.int32)


def encode_prompt(prompt: str, settings: ServeSettings, allow_empty: bool) -> np.ndarray:
    """A prompt as byte tokens [P] int32, within --max-prompt-bytes."""
    data = utf8(prompt, "prompt")
    if not data and not allow_empty:
        raise bad_request("prompt is empty: the model has no start-of-text token, so give at "
                          "least one byte", "prompt")
    if len(data) > settings.max_prompt_bytes:
        raise bad_request(f"the prompt is {len(data)} bytes; this server takes at most "
                          f"{settings.max_prompt_bytes} (--max-prompt-bytes)", "prompt")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


def token_prompt(ids: list[int], settings: ServeSettings, param: str) -> np.ndarray:
    """A prompt of token ids as [P] int32: each id in the vocabulary (bytes: [0, 256))."""
    if not ids:
        raise bad_request(f"{param} is an empty list of token ids: give at least one", param)
    if len(ids) > settings.max_prompt_bytes:
        raise bad_request(f"the prompt is {len(ids)} tokens; this server takes at most "
                          f"{settings.max_prompt_bytes} (--max-prompt-bytes)", param)
    outside = next((at for at, token in enumerate(ids) if not 0 <= token < BYTE_VOCAB), None)
    if outside is not None:  # (checked before numpy: a JSON int may exceed int64)
        raise bad_request(f"{param}[{outside}] is token id {ids[outside]}, outside the "
                          f"vocabulary [0, {BYTE_VOCAB}) (this server's model reads bytes)",
                          param)
    return np.array(ids, dtype=np.int32)  # [P]


def utf8(text: str, param: str) -> bytes:
    """The text's UTF-8 bytes; JSON can carry lone surrogates ("\\ud800"), which have none."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise bad_request(f"{param} is not valid Unicode ({exc.reason} at character "
                          f"{exc.start})", param) from None


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], raw: bytes, max_depth: int) -> Body:
    """The JSON body as `model`, or an ApiError (400) that names the field. A body nested
    deeper than `max_depth` is refused before it is parsed (parsing and checking it recurse)."""
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise bad_request(f"the request body nests {depth} levels deep; this server takes at "
                          f"most {max_depth} (--max-json-depth)", bound="json_depth")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc) from None


def _field_error(exc: ValidationError) -> ApiError:
    """The deepest error (the list item, not the union); pydantic's union tags ("str",
    "list[str]") are left out of the field's name."""
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    param = ""
    for part in error["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part not in UNION_TAGS and "[" not in part:
            param += f".{part}" if param else part
    if error["type"] == "missing":
        return bad_request(f"{param} is required", param)
    got = repr(error.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    return bad_request(f"{param}: {error['msg'].lower()}, got {got}", param)


UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}
