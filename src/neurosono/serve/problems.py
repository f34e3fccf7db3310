"""Errors as ``application/problem+json`` (RFC 9457): a status, a title and a detail that
names the field and the problem. Never a traceback."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

PROBLEM_TYPE = "application/problem+json"


class ProblemError(Exception):
    """An answer other than success, raised anywhere in a request and turned into problem+json."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class ProblemBody(BaseModel):
    """The body of every error response."""

    type: str = Field("about:blank", description="always about:blank: the status says what kind")
    title: str = Field(description="the HTTP status phrase")
    status: int
    detail: str = Field(description="what was wrong, naming the field or file")
    request_id: str | None = Field(None, description="the X-Request-ID of the request, as logged")


def problem_response(status: int, detail: str, request_id: str | None, headers=None) -> JSONResponse:
    body = ProblemBody(title=HTTPStatus(status).phrase, status=status, detail=detail, request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def problem_responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemBody"}}},
        }
        for status in statuses
    }
