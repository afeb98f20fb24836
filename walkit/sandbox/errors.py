"""MongoDB error codes the sandbox answers with, and the error it raises."""

from __future__ import annotations

from typing import Any

CODE_NAMES = {
    1: "InternalError",
    2: "BadValue",
    9: "FailedToParse",
    13: "Unauthorized",
    14: "TypeMismatch",
    20: "IllegalOperation",
    22: "InvalidBSON",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    43: "CursorNotFound",
    47: "NoMatchingDocument",
    48: "NamespaceExists",
    59: "CommandNotFound",
    66: "ImmutableField",
    67: "CannotCreateIndex",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    112: "WriteConflict",
    115: "CommandNotSupported",
    197: "InvalidIndexSpecificationOption",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    223: "IllegalOpMsgFlag",
    10334: "BSONObjectTooLarge",
    40414: "Location40414",
    40415: "Location40415",
    40430: "Location40430",
    40431: "Location40431",
    40432: "Location40432",
    40587: "Location40587",
    5739101: "Location5739101",
    11000: "DuplicateKey",
}


class CommandError(Exception):
    """A command failed; becomes ``{ok: 0, code, codeName, errmsg}``."""

    def __init__(self, code: int, message: str, labels: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.labels = labels or []

    def reply(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": 0.0,
            "errmsg": str(self),
            "code": self.code,
            "codeName": CODE_NAMES.get(self.code, "UnknownError"),
        }
        if self.labels:
            out["errorLabels"] = self.labels
        return out
