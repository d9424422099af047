"""Exceptions of the client: each carries the gRPC status code and the server's own message."""

from __future__ import annotations

import grpc


class ReplayError(Exception):
    """A call failed. `code` is the gRPC status, `message` the server's text (it names the field or ticker)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class NotFound(ReplayError):
    """NOT_FOUND: an unknown ticker (named in the message), or a market without a settlement."""


class InvalidArgument(ReplayError):
    """INVALID_ARGUMENT: a bad range, size, filter or a damaged resume or page token; the message names the field."""


class ResourceExhausted(ReplayError):
    """RESOURCE_EXHAUSTED: a server limit (named in the message), e.g. too many streams at once: retry later."""


class Unavailable(ReplayError):
    """UNAVAILABLE or DEADLINE_EXCEEDED after the client's retries ran out."""


class SummaryMismatch(ReplayError):
    """The stream's final summary disagrees with what the client delivered (count or content hash)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DATA_LOSS, message)


_BY_CODE: dict[grpc.StatusCode, type[ReplayError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The code and details of a failed call (grpc raises RpcError objects that are also grpc.Call)."""
    if isinstance(error, grpc.Call):
        return error.code(), error.details() or ""
    return grpc.StatusCode.UNKNOWN, str(error)


def from_rpc_error(error: grpc.RpcError) -> ReplayError:
    code, message = status_of(error)
    return _BY_CODE.get(code, ReplayError)(code, message)
