"""The HTTP side of problem details: the FastAPI exception handlers that answer every error as a
`shared.problems.Problem` document."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.metrics import ERRORS
from shared.problems import DEFAULT_CODES, PROBLEM_CONTENT_TYPE, TITLES, Problem


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.to_dict(),
        status_code=problem.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def install_problem_handlers(app: FastAPI, service: str = "") -> None:
    def answer(problem: Problem) -> JSONResponse:
        ERRORS.labels(service, "http", problem.code).inc()
        return problem_response(problem)

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return answer(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        return answer(
            Problem(
                422,
                "validation_error",
                f"{where}: {first['msg']}" if where else str(first["msg"]),
                errors=errors,
            )
        )

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's answer to a body that is not even text: the same as to one that is not JSON
            return answer(
                Problem(
                    422,
                    "validation_error",
                    "body: the body is not JSON (it is not UTF-8 text)",
                    errors=[{"loc": ["body"], "msg": "The body is not UTF-8 text", "type": "json_invalid"}],
                )
            )
        code = DEFAULT_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
        headers = dict(exc.headers) if exc.headers else None
        return answer(Problem(exc.status_code, code, detail, headers=headers))

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        from shared.logging import get_logger

        get_logger(__name__).exception("unhandled_error", error_type=type(exc).__name__)
        return answer(Problem(500, "internal_error", "An unexpected error occurred."))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
