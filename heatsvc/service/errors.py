"""Request errors as gRPC statuses with details (google.rpc.BadRequest field violations)."""
from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class RequestError(Exception):
    """A request the server refuses: a status code, a message and, for bad fields, violations."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = list(violations)

    def status(self) -> grpc.Status:
        """The rich status: code, message and a BadRequest detail when fields were wrong."""
        proto = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        if self.violations:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in self.violations]))
            proto.details.append(detail)
        return rpc_status.to_status(proto)


def invalid(violations: list[tuple[str, str]]) -> RequestError:
    """INVALID_ARGUMENT naming every bad field."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                        "invalid request: " + "; ".join(f"{f}: {d}" for f, d in violations), violations)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, message)


def unimplemented(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNIMPLEMENTED, message)


def exhausted(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of a BadRequest detail in a client-side RpcError."""
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    out = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out
