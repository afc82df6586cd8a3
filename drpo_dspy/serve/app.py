"""The OpenAI-compatible FastAPI app: each request is answered by a compiled DRPO program over the base model.

Per request: check the key, read a bounded JSON body, pick the program by ``model``, validate the conversation,
decoding parameters and extras (tools, response_format, logprobs: :mod:`~drpo_dspy.serve.features`), retrieve the
examples for the last user turn, send the DRPO layout (or, for tools and structured output, the plain layout:
:mod:`~drpo_dspy.serve.plain_layout`) to the base model through litellm, and return the answer (the text before
``<END>``; tool calls and logprobs in OpenAI's shape), with the program's version in ``system_fingerprint`` and
headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from drpo_dspy.serve.access_log import AccessLogMiddleware, log_exchange
from drpo_dspy.serve.admission import Admission
from drpo_dspy.serve.answers import answer_of
from drpo_dspy.serve.conversation import Conversation, conversation_messages, parse_messages, parse_prompt
from drpo_dspy.serve.decoding import CHAT_FIELDS, COMPLETION_FIELDS, RequestDecoding, check_fields, parse_decoding
from drpo_dspy.serve.errors import APIError, bad_request, missing_key, too_large, unknown_model, upstream_error
from drpo_dspy.serve.features import Features, Route, parse_features
from drpo_dspy.serve.payloads import ChunkWriter, completion_body, model_card, program_headers
from drpo_dspy.serve.plain_layout import (
    PlainConversation,
    has_tool_messages,
    parse_plain_messages,
    plain_messages,
    prompt_conversation,
)
from drpo_dspy.serve.programs import LoadedProgram, ProgramRegistry
from drpo_dspy.serve.settings import ServeSettings
from drpo_dspy.serve.streaming import StreamResult, answer_chunks, answers_text
from drpo_dspy.serve.upstream import Delta, Upstream

AnyConversation = Conversation | PlainConversation

logger = logging.getLogger(__name__)


def create_app(settings: ServeSettings, registry: ProgramRegistry, upstream: Upstream | None = None) -> FastAPI:
    """The app for already loaded programs; hot reload runs in the app's lifespan when ``reload_interval > 0``."""
    upstream = upstream or Upstream(settings)
    route = Route.of(settings)
    redactor = settings.redactor()
    admission = Admission(settings.max_concurrent)
    keys = [key.encode() for key in settings.api_keys]

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_watch(registry, settings.reload_interval)) if settings.reload_interval else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="drpo serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLogMiddleware, redact=redactor.text)
    app.state.registry, app.state.settings, app.state.upstream = registry, settings, upstream
    app.state.admission = admission

    def require_key(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        offered = token.strip().encode()
        matches = [hmac.compare_digest(offered, key) for key in keys]  # compare with every key: no early exit
        if scheme.lower() != "bearer" or not any(matches):
            raise missing_key()

    async def read_body(request: Request) -> dict[str, Any]:
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        data = bytearray()
        async for piece in request.stream():
            data.extend(piece)
            if len(data) > limit:
                raise too_large(limit)
        try:
            body = json.loads(bytes(data))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad_request(f"The request body is not valid JSON ({exc}).", code="invalid_json") from None
        except RecursionError:
            raise bad_request("The request body is nested too deeply.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        return body

    def choose_program(request: Request, body: dict[str, Any]) -> LoadedProgram:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise bad_request("'model' is required: the name of a served program (see GET /v1/models)",
                              param="model", code="missing_required_parameter")
        program = registry.get(name)
        if program is None:
            raise unknown_model(name, registry.names())
        request.state.model, request.state.version = program.name, program.version
        return program

    async def prompt_for(program: LoadedProgram, conversation: AnyConversation) -> list[dict[str, Any]]:
        """The messages sent for ``conversation``, retrieval off the loop: the program's own DRPO layout
        (``AlignedResponder.messages_for``) or the plain layout."""
        build = plain_messages if isinstance(conversation, PlainConversation) else conversation_messages
        return await asyncio.to_thread(build, program.responder, conversation)

    async def from_upstream(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except APIError:
            raise
        except Exception as exc:
            error = upstream_error(exc, redactor)
            logger.warning("base model call failed: %s -> %d", type(exc).__name__, error.status)
            raise error from None

    async def answer(kind: str, conversation: AnyConversation, decoding: RequestDecoding, features: Features,
                     program: LoadedProgram) -> Any:
        release, streaming = admission.enter(), False
        params = {**decoding.params, **features.params}
        try:
            messages = await prompt_for(program, conversation)
            headers = program_headers(program)
            if decoding.stream:
                deltas = await from_upstream(upstream.stream(messages, params, decoding.include_usage))
                events = _events(kind, program, deltas, decoding, features, messages, release)
                weakref.finalize(events, release)  # a stream dropped before it started still frees its slot
                streaming = True
                return StreamingResponse(events, headers=headers, media_type="text/event-stream")
            completion = await from_upstream(upstream.complete(messages, params))
        finally:
            if not streaming:
                release()
        answers = [answer_of(choice, features.shape, features.logprobs) for choice in completion.choices]
        empty = [a.finish_reason for a in answers if not a.text.strip() and not a.tool_calls]
        if empty:
            logger.warning("program %s gave an empty answer (finish_reason %s)", program.name, ", ".join(empty))
        if settings.log_prompts:
            log_exchange(program.name, program.version, messages, [a.text for a in answers])
        tokens = (completion.prompt_tokens, completion.completion_tokens)
        return JSONResponse(completion_body(kind, program, answers, tokens), headers=headers)

    async def _events(kind: str, program: LoadedProgram, deltas: AsyncIterator[Delta], decoding: RequestDecoding,
                      features: Features, messages: list[dict[str, Any]], release: Callable[[], None]
                      ) -> AsyncIterator[str]:
        writer, result = ChunkWriter(kind, program), StreamResult()
        try:
            async for event in answer_chunks(writer, deltas, n=decoding.n, shape=features.shape,
                                             logprobs=features.logprobs, include_usage=decoding.include_usage,
                                             result=result):
                yield event
        except Exception as exc:  # the stream already started: report in-band, as OpenAI does
            yield writer.error(upstream_error(exc, redactor).body())
        finally:
            release()
            with contextlib.suppress(Exception):
                await deltas.aclose()
        if settings.log_prompts:
            log_exchange(program.name, program.version, messages, answers_text(result))
        yield writer.done()

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request)
        program = choose_program(request, body)
        check_fields(body, CHAT_FIELDS)
        messages = body.get("messages")
        features = parse_features(body, "chat", route, tool_messages=has_tool_messages(messages))
        if features.layout == "plain":
            conversation: AnyConversation = parse_plain_messages(messages, max_messages=settings.max_messages)
        else:
            conversation = parse_messages(messages, max_messages=settings.max_messages)
        decoding = parse_decoding(body, settings, allowed=CHAT_FIELDS, defaults=program.decoding,
                                  drpo_stops=features.drpo_stops)
        return await answer("chat", conversation, decoding, features, program)

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(request: Request) -> Any:
        body = await read_body(request)
        program = choose_program(request, body)
        check_fields(body, COMPLETION_FIELDS)
        conversation: AnyConversation = parse_prompt(body.get("prompt"))
        features = parse_features(body, "text", route)
        if features.layout == "plain":
            conversation = prompt_conversation(conversation.query)
        decoding = parse_decoding(body, settings, allowed=COMPLETION_FIELDS, defaults=program.decoding,
                                  drpo_stops=features.drpo_stops)
        return await answer("text", conversation, decoding, features, program)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(program) for program in registry.programs()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(require_key)])
    async def get_model(name: str) -> dict[str, Any]:
        program = registry.get(name)
        if program is None:
            raise unknown_model(name, registry.names())
        return model_card(program)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "base_model_type": settings.base_model_type,
                "programs": {program.name: program.version for program in registry.programs()}}

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    return app


async def _watch(registry: ProgramRegistry, interval: float) -> None:
    """Poll the program files and swap in changed ones (loading runs in a worker thread)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(registry.reload_changed)
        except Exception as exc:  # never let the watcher die
            logger.warning("program reload check failed: %s", type(exc).__name__)
