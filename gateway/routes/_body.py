"""Request bodies, decoded strictly in one pass straight into their wire type.

Litestar's own path decodes JSON into dicts and then converts them leniently (`"10"` becomes
10); here each body type has one module-level msgspec decoder, strict, and every way a body can
be wrong is a 4xx problem naming the field: not JSON (400), not UTF-8 (400), nested deeper than
MAX_JSON_DEPTH (422), a field of the wrong type or out of range (422), not `application/json`
(415). A duplicate key is not refused: the last one wins, as msgspec decodes in one pass.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec
from litestar.dto import MsgspecDTO
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from core import InvalidInput, MalformedInput, UnsupportedMediaType

from ..errors import field_of

T = TypeVar("T", bound=msgspec.Struct)

MAX_JSON_DEPTH = 64

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_SPECIAL = re.compile(rb'[\\"\[\]{}]')
_BACKSLASH, _QUOTE = 0x5C, 0x22
_OPEN = frozenset(b"[{")


def json_depth(body: bytes) -> int:
    """How deeply the JSON text nests arrays and objects (brackets inside strings excluded), up
    to just past MAX_JSON_DEPTH. One pass over the bytes that matter: linear whatever the body."""
    if body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than the limit: not worth measuring
    depth = deepest = 0
    in_string = False
    escaped = -1  # the position of a character a backslash escapes
    for m in _SPECIAL.finditer(body):
        pos = m.start()
        c = body[pos]
        if in_string:
            if pos == escaped:
                continue
            if c == _BACKSLASH:
                escaped = pos + 1
            elif c == _QUOTE:
                in_string = False
        elif c == _QUOTE:
            in_string = True
        elif c in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        else:
            depth -= 1
    return deepest


def decode(body: bytes, type_: type[T], content_type: str | None) -> T:
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {media!r}"
            if media
            else "Content-Type: application/json is required"
        )
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        if json_depth(body) > MAX_JSON_DEPTH:
            raise InvalidInput(f"the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
        value: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, message = field_of(str(exc), None)
        raise InvalidInput(f"{field}: {message}" if field else message, field=field) from None
    except msgspec.DecodeError as exc:
        raise MalformedInput(f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise MalformedInput("the body is not valid UTF-8") from None
    except RecursionError:
        raise InvalidInput(f"the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels") from None
    return value


class Body(MsgspecDTO[T], Generic[T]):
    """`dto=Body[X], return_dto=None` on a route: its `data: X` is decoded by `decode`."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode(value, self.model_type, self.asgi_connection.headers.get("content-type"))

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Reference | Schema:
        # The wire type's own schema, as it is documented without a DTO.
        schema: Reference | Schema = schema_creator.for_field_definition(
            FieldDefinition.from_annotation(cls.model_type)
        )
        return schema
