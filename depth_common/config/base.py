"""The pieces every config section is built from: the frozen model base, strict scalar types,
``spec`` (a default with the text an error states as expected) and the translation of a
pydantic ``ValidationError`` into a :class:`ConfigError` that names the dotted key."""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import FrozenInstanceError
from typing import Annotated, Any, NoReturn

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from depth_common.errors import ConfigError

#: ``1e-5``: a number in YAML 1.2 and to anyone writing a learning rate, but PyYAML follows
#: YAML 1.1, whose floats need a dot (``1.0e-5``), and hands it over as the string "1e-5".
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _exponent_string_to_float(value: Any) -> Any:
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


# Strict scalars: YAML's `yes`, "3" or true never pass for a bool, an integer or a number
# (only the exponent form YAML 1.1 leaves a string, like 5e-4, is read as the number it is).
# A number is finite: YAML's .inf and .nan mean nothing for any key here.
Int = Annotated[int, Strict()]
Float = Annotated[
    float, Strict(), AllowInfNan(False), BeforeValidator(_exponent_string_to_float)
]  # int → float
Str = StrictStr
Bool = StrictBool

#: Error type of :func:`reject`; its context carries the field, the value and the expectation.
_REJECTED = "config_rejected"
#: Error type of :func:`reject_message`: a finished message, shown as it is.
_MESSAGE = "config_message"

# pydantic's type errors → the expectation they state; range and choice errors state the
# field's own text (see `spec`).
_TYPE_TEXT = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
}


def spec(default: Any, expected: str, **constraints: Any) -> Any:
    """A field's default and constraints (``ge``, ``gt``, ...) with ``expected``, the text a
    violation states (``training.epochs: got -1, expected an integer >= 0``)."""
    return Field(default, json_schema_extra={"expected": expected}, **constraints)


def one_of(*names: str) -> str:
    return "one of " + ", ".join(names)


def reject(field: str, value: Any, expected: str) -> NoReturn:
    """Fail a validator: ``field`` (relative to the model validated; ``""`` in a field
    validator) got ``value``, ``expected`` says what it takes."""
    raise PydanticCustomError(
        _REJECTED,
        "{field}: got {value}, expected {expected}",
        {"field": field, "value": value, "expected": expected},
    )


def reject_message(message: str) -> NoReturn:
    """Fail a validator with a finished ``message`` that names its own keys."""
    raise PydanticCustomError(_MESSAGE, "{message}", {"message": message})


class ConfigModel(BaseModel):
    """A frozen, hashable section: unknown keys are errors, assignment raises
    ``FrozenInstanceError`` (an ``AttributeError``) as on a frozen dataclass."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


def validate_section(model: type[ConfigModel], raw: Any, prefix: str = "") -> Any:
    """``raw`` validated as ``model`` (errors name keys under ``prefix``)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, model, prefix) from None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    return annotation if inspect.isclass(annotation) and issubclass(annotation, BaseModel) else None


def _locate(
    model: type[BaseModel], loc: tuple[Any, ...], prefix: str
) -> tuple[str, type[BaseModel] | None, FieldInfo | None]:
    """``loc`` → the dotted key, the model that holds its last name, that name's field."""
    parts = [prefix] if prefix else []
    current: type[BaseModel] | None = model
    owner, info = model, None
    for part in loc:
        if isinstance(part, int):  # an item of a list-valued field
            parts[-1] += f"[{part}]"
            continue
        parts.append(str(part))
        owner = current
        info = current.model_fields.get(part) if current is not None else None
        current = _submodel(info.annotation) if info is not None else None
    return ".".join(parts), owner, info


def _holds_float(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        return _holds_float(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_holds_float(a) for a in typing.get_args(annotation))
    return annotation is float


def _expected_of(info: FieldInfo | None) -> str | None:
    extra = info.json_schema_extra if info is not None else None
    return extra.get("expected") if isinstance(extra, dict) else None  # type: ignore[return-value]


def config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """The first error of ``exc`` as ``key: got <value>, expected <what>``."""
    err = exc.errors(include_url=False)[0]
    key, owner, info = _locate(model, err["loc"], prefix)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    item = bool(err["loc"]) and isinstance(err["loc"][-1], int)
    if kind == _MESSAGE:
        return ConfigError(ctx["message"])
    if kind == _REJECTED:
        field = ctx["field"]
        if field.startswith("["):  # an item of the field validated
            key += field
        else:
            key = f"{key}.{field}" if key and field else key or field
        return ConfigError(f"{key}: got {ctx['value']!r}, expected {ctx['expected']}")
    if kind == "extra_forbidden":
        known = ", ".join(sorted(owner.model_fields)) if owner is not None else ""
        expected = f"no such key; known keys: {known}"
    elif kind in ("too_long", "too_short"):
        expected = f"a list of {ctx.get('max_length', ctx.get('min_length'))} values"
    elif kind == "missing" and item and info is not None:  # a fixed-length list, too short
        key = key.rsplit("[", 1)[0]
        expected = f"a list of {len(typing.get_args(info.annotation))} values"
    elif kind in _TYPE_TEXT:
        expected = _TYPE_TEXT[kind]
    else:
        fallback = "a finite number" if kind == "finite_number" else err["msg"]
        expected = (None if item else _expected_of(info)) or fallback
        if info is not None and _holds_float(info.annotation) and type(value) is int:
            value = float(value)  # shown as the number the field holds
    return ConfigError(f"{key}: got {value!r}, expected {expected}")
