"""Hume EVI REST API: prompts, tools, paging and the 422 error body (evi-protocol.md §12).

Owns: pydantic models of the REST bodies the gateway and the simulator's store exchange for prompts and
tools (§12.1), the paged list wrappers (§12.2), the validation error body with a one-line-per-problem
rendering (§12.3), and ``parse_body``, which turns any JSON value into a posted model or that error body.
Configs live in ``gateway.wire.evi_rest_configs``.

Field names are the wire's own (the API's JSON is snake_case). Two kinds of model:

- posted bodies (``EviRestBody``) forbid unknown fields, so what the gateway sends is exactly the spec's
  and a misspelt field is an error, not a silently ignored key; documented value ranges are enforced;
- returned resources (plain ``EviModel``) keep unknown fields and take open enums (``version_type``,
  ``tool_type``) as strings, since EVI adds fields and values over time.

Optional fields left unset are omitted from ``to_json``/``to_dict``, as in ``gateway.wire.evi_messages``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, TypeVar

from pydantic import AfterValidator, ConfigDict, ValidationError

from gateway.wire.evi_messages import EviModel

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "EviRestBody",
    "HttpValidationError",
    "PatchedPromptVersionDescription",
    "PostedPrompt",
    "PostedPromptName",
    "PostedPromptVersion",
    "PostedUserDefinedTool",
    "PostedUserDefinedToolName",
    "PostedUserDefinedToolVersion",
    "PostedUserDefinedToolVersionDescription",
    "PromptExpansionSpec",
    "ReturnPagedPrompts",
    "ReturnPagedUserDefinedTools",
    "ReturnPrompt",
    "ReturnUserDefinedTool",
    "ValidationErrorItem",
    "parse_body",
    "validation_error_from",
    "validation_message",
]

# §12.2: ``page_size`` is 1–100 and defaults to 10; ``page_number`` counts from 0.
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100


class EviRestBody(EviModel):
    """Base of every posted REST body: frozen, and an unknown field is a validation error (§12.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------------
# Validation errors (§12.3)
# ---------------------------------------------------------------------------------------------------


class ValidationErrorItem(EviModel):
    """§12.3 one problem of a 422: where (``loc``, e.g. ``["body", "tools", 0, "id"]``), what and its kind."""

    loc: list[str | int]
    msg: str
    type: str


class HttpValidationError(EviModel):
    """§12.3 the body of a 422 response: ``{"detail": [problem, …]}``."""

    detail: list[ValidationErrorItem] | None = None


def _location(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(request)"


def validation_message(error: HttpValidationError) -> str:
    """Render a 422 body readably: one ``where: what`` line per problem, in the order given."""
    if not error.detail:
        return "validation failed (no detail given)"
    return "\n".join(f"{_location(item.loc)}: {item.msg}" for item in error.detail)


def validation_error_from(exc: ValidationError, where: str = "body") -> HttpValidationError:
    """The 422 body for a pydantic failure: each problem located under ``where`` (``body`` or ``query``)."""
    items = [
        ValidationErrorItem(loc=[where, *error["loc"]], msg=error["msg"], type=error["type"])
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return HttpValidationError(detail=items)


BodyT = TypeVar("BodyT", bound=EviRestBody)


def parse_body(model: type[BodyT], body: object) -> BodyT | HttpValidationError:
    """``body`` (an instance already, or decoded JSON) as ``model``, or the 422 body saying why it is not."""
    if isinstance(body, model):
        return body
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return validation_error_from(exc)


# ---------------------------------------------------------------------------------------------------
# Prompts (§12.1)
# ---------------------------------------------------------------------------------------------------


class PromptExpansionSpec(EviModel):
    """§12.1 ``prompt_expansion``: ``enabled`` false stops EVI appending its own instructions (default true)."""

    enabled: bool | None = None


class PostedPrompt(EviRestBody):
    """§12.1 ``POST /v0/evi/prompts``: a new prompt, created as version 0."""

    name: str
    text: str
    version_description: str | None = None
    prompt_expansion: PromptExpansionSpec | None = None


class PostedPromptVersion(EviRestBody):
    """§12.1 ``POST /v0/evi/prompts/{id}``: the next version of a prompt; the name is kept."""

    text: str
    version_description: str | None = None
    prompt_expansion: PromptExpansionSpec | None = None


class PostedPromptName(EviRestBody):
    """§12.1 ``PATCH /v0/evi/prompts/{id}``: a new name for every version."""

    name: str


class PatchedPromptVersionDescription(EviRestBody):
    """§12.1 ``PATCH /v0/evi/prompts/{id}/version/{version}``: that version's description (null clears it)."""

    version_description: str | None = None


class ReturnPrompt(EviModel):
    """§12.1 one prompt version; ``version_type`` is ``FIXED``, or ``LATEST`` when a config follows the newest."""

    id: str
    version: int
    version_type: str
    name: str
    created_on: int
    modified_on: int
    text: str
    version_description: str | None = None
    prompt_expansion: PromptExpansionSpec | None = None


class ReturnPagedPrompts(EviModel):
    """§12.2 one page of prompt versions."""

    page_number: int
    page_size: int
    total_pages: int
    prompts_page: list[ReturnPrompt]


# ---------------------------------------------------------------------------------------------------
# Tools (§12.1, evi-protocol.md §6)
# ---------------------------------------------------------------------------------------------------


def _json_schema_text(value: str) -> str:
    try:
        schema = json.loads(value)
    except ValueError:
        raise ValueError("parameters must be a JSON schema written as a string; it is not valid JSON") from None
    if not isinstance(schema, dict):
        raise ValueError(f"parameters must be a JSON schema (an object), got a JSON {type(schema).__name__}")
    return value


# A tool's parameters travel as JSON text (§6), never as a nested object.
JsonSchemaText = Annotated[str, AfterValidator(_json_schema_text)]


class PostedUserDefinedTool(EviRestBody):
    """§12.1 ``POST /v0/evi/tools``: a new function tool, created as version 0; ``parameters`` is JSON text."""

    name: str
    parameters: JsonSchemaText
    description: str | None = None
    fallback_content: str | None = None
    version_description: str | None = None


class PostedUserDefinedToolVersion(EviRestBody):
    """§12.1 ``POST /v0/evi/tools/{id}``: the next version of a tool; the name is kept."""

    parameters: JsonSchemaText
    description: str | None = None
    fallback_content: str | None = None
    version_description: str | None = None


class PostedUserDefinedToolName(EviRestBody):
    """§12.1 ``PATCH /v0/evi/tools/{id}``: a new name for every version."""

    name: str


class PostedUserDefinedToolVersionDescription(EviRestBody):
    """§12.1 ``PATCH /v0/evi/tools/{id}/version/{version}``: that version's description."""

    version_description: str | None = None


class ReturnUserDefinedTool(EviModel):
    """§12.1 one tool version; ``tool_type`` is ``FUNCTION`` for user-defined tools, ``parameters`` JSON text."""

    tool_type: str
    id: str
    version: int
    version_type: str
    name: str
    created_on: int
    modified_on: int
    parameters: str
    version_description: str | None = None
    fallback_content: str | None = None
    description: str | None = None


class ReturnPagedUserDefinedTools(EviModel):
    """§12.2 one page of tool versions."""

    page_number: int
    page_size: int
    total_pages: int
    tools_page: list[ReturnUserDefinedTool]
