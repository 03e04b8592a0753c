"""Request-parameter schemas derived from stripe-python's own typed params.

stripe-python ships one ``TypedDict`` per API operation (``stripe.params.CustomerCreateParams``,
``stripe.params.billing.MeterEventCreateParams``, ...), generated from Stripe's OpenAPI spec. This
module turns such a class into a :class:`Spec` tree (allowed keys, required keys, scalar kinds,
enums, nested objects, arrays and free-form maps) and validates decoded request parameters against
it, producing Stripe-shaped errors (``parameter_unknown``, ``parameter_missing``...).

The annotations are strings or ``ForwardRef`` objects (e.g. ``"Literal['']|Dict[str, str]"``) that
refer to names only imported under ``TYPE_CHECKING``; they are evaluated one by one in the defining
module's namespace, with a fallback namespace for the few names the SDK leaves unresolvable.
"""

from __future__ import annotations

import decimal
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ForwardRef

import typing_extensions
from stripe._request_options import RequestOptions

from .errors import StripeAPIError

__all__ = [
    "ObjectSpec",
    "Spec",
    "decode_form",
    "spec_for",
    "validate",
]

_REQUEST_OPTION_KEYS = frozenset(RequestOptions.__annotations__)
_NOT_REQUIRED = {typing.NotRequired, typing_extensions.NotRequired, typing.Required, typing_extensions.Required}
_LITERALS = {typing.Literal, typing_extensions.Literal}


@dataclass
class ObjectSpec:
    """A ``TypedDict``: the allowed keys, which are required, and each key's type."""

    name: str
    fields: dict[str, Spec] = field(default_factory=dict)
    required: frozenset[str] = frozenset()


@dataclass
class Spec:
    """The alternatives a value may take (the flattened ``Union`` of an annotation)."""

    scalars: set[str] = field(default_factory=set)  # "str", "int", "bool", "decimal", "float", "any"
    enum: frozenset[str] | None = None  # allowed string values when the string is an enumeration
    allow_empty: bool = False  # Literal[''] (Stripe's "unset this field")
    objects: list[ObjectSpec] = field(default_factory=list)
    list_item: Spec | None = None
    map_value: Spec | None = None

    def describe(self) -> str:
        kinds = sorted(self.scalars)
        if self.enum:
            kinds.append("one of " + ", ".join(sorted(self.enum)))
        if self.objects:
            kinds.append("object")
        if self.list_item is not None:
            kinds.append("array")
        if self.map_value is not None:
            kinds.append("hash")
        return " or ".join(kinds) or "nothing"


_FALLBACK_NS: dict[str, Any] = {}
for _mod in (typing, typing_extensions):
    for _name in dir(_mod):
        if not _name.startswith("_"):
            _FALLBACK_NS.setdefault(_name, getattr(_mod, _name))
_FALLBACK_NS.update({"Decimal": decimal.Decimal, "StripeContext": str})


def _namespace(module_name: str | None) -> dict[str, Any]:
    ns = dict(_FALLBACK_NS)
    if module_name and module_name in sys.modules:
        ns.update(vars(sys.modules[module_name]))
    if "UntypedStripeObject" not in ns:
        from stripe._stripe_object import UntypedStripeObject

        ns["UntypedStripeObject"] = UntypedStripeObject
    return ns


def _evaluate(tp: Any, module_name: str | None) -> Any:
    """Evaluate string / ForwardRef annotations (recursively inside generic arguments)."""
    if isinstance(tp, str):
        return _evaluate(eval(tp, _namespace(module_name)), module_name)
    if isinstance(tp, ForwardRef):
        mod = getattr(tp, "__forward_module__", None) or module_name
        return _evaluate(eval(tp.__forward_arg__, _namespace(mod)), mod)
    return tp


_CACHE: dict[type, ObjectSpec] = {}


def spec_for(cls: type) -> ObjectSpec:
    """The :class:`ObjectSpec` of a stripe-python params ``TypedDict`` (cached)."""
    cached = _CACHE.get(cls)
    if cached is not None:
        return cached
    obj = ObjectSpec(name=cls.__name__)
    _CACHE[cls] = obj  # registered before recursing, for self-referential types
    annotations: dict[str, Any] = dict(getattr(cls, "__annotations__", {}))
    inherits_options = any(
        annotations.get(k) is RequestOptions.__annotations__[k] for k in _REQUEST_OPTION_KEYS if k in annotations
    )
    required = set(getattr(cls, "__required_keys__", frozenset()))
    for key, annotation in annotations.items():
        if inherits_options and key in _REQUEST_OPTION_KEYS:
            required.discard(key)
            continue
        obj.fields[key] = _build(annotation, cls.__module__)
    obj.required = frozenset(required)
    return obj


def _build(annotation: Any, module_name: str) -> Spec:
    spec = Spec()
    literals: set[str] = set()
    _collect(_evaluate(annotation, module_name), module_name, spec, literals)
    non_empty = {v for v in literals if v != ""}
    if "" in literals:
        spec.allow_empty = True
    if non_empty:
        # The SDK writes enumerations as ``Literal[...] | str`` for forward compatibility; the API
        # itself only accepts the listed values, so the literal set wins over the catch-all ``str``.
        spec.scalars.discard("str")
        spec.enum = frozenset(non_empty)
    return spec


def _collect(tp: Any, module_name: str, spec: Spec, literals: set[str]) -> None:
    tp = _evaluate(tp, module_name)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _NOT_REQUIRED:
        _collect(args[0], module_name, spec, literals)
        return
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            _collect(arg, module_name, spec, literals)
        return
    if origin in _LITERALS:
        for value in args:
            if isinstance(value, bool):
                spec.scalars.add("bool")
            elif isinstance(value, int):
                spec.scalars.add("int")
            else:
                literals.add(str(value))
        return
    if origin in (list, typing.List, tuple):  # noqa: UP006 - matching what the SDK writes
        spec.list_item = _build(args[0], module_name) if args else Spec(scalars={"any"})
        return
    if origin in (dict, typing.Dict) or _is_untyped_object(tp, origin):  # noqa: UP006
        value_type = args[1] if len(args) == 2 else (args[0] if args else Any)
        spec.map_value = Spec(scalars={"any"}) if value_type is Any else _build(value_type, module_name)
        return
    if tp is type(None):
        return
    if isinstance(tp, type) and typing_extensions.is_typeddict(tp):
        spec.objects.append(spec_for(tp))
        return
    if tp is bool:
        spec.scalars.add("bool")
    elif tp is int:
        spec.scalars.add("int")
    elif tp is float:
        spec.scalars.add("float")
    elif tp is decimal.Decimal:
        spec.scalars.add("decimal")
    elif tp is str:
        spec.scalars.add("str")
    else:
        spec.scalars.add("any")


def _is_untyped_object(tp: Any, origin: Any) -> bool:
    candidate = origin or tp
    return getattr(candidate, "__name__", "") == "UntypedStripeObject"


# --------------------------------------------------------------------------------------------------
# Decoding


_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Decode Stripe's bracketed form encoding (``a[b][0][c]=v``, ``expand[]=x``) into nested dicts.

    Arrays stay dicts keyed by the index string until validation, which turns them into lists where
    the schema expects an array (and rejects them where it does not).
    """
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        m = _KEY_RE.match(raw_key)
        if not m:
            raise StripeAPIError.invalid(f"Invalid parameter name: {raw_key}", param=raw_key)
        parts = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node: dict[str, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                if isinstance(node.get(part), dict):
                    raise StripeAPIError.invalid(
                        f"Invalid parameter: {raw_key} mixes a value and a hash", param=raw_key
                    )
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeAPIError.invalid(
                        f"Invalid parameter: {raw_key} mixes a value and a hash", param=raw_key
                    )
                node = child
    return root


# --------------------------------------------------------------------------------------------------
# Validation


def validate(params: dict[str, Any], spec: ObjectSpec, *, form: bool = True) -> dict[str, Any]:
    """Check ``params`` against ``spec`` and return them normalised (ints, bools, lists...).

    ``form`` is True for form-encoded (v1) bodies, where every leaf arrives as a string; False for
    JSON (v2) bodies, whose leaves keep their JSON types.
    """
    return _validate_object(params, spec, "", form)


def _param_name(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]" if prefix else key


def _validate_object(value: Any, obj: ObjectSpec, prefix: str, form: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StripeAPIError.invalid(f"Invalid object: {prefix} must be a hash", param=prefix or None)
    out: dict[str, Any] = {}
    for key, sub in value.items():
        name = _param_name(prefix, key)
        if key not in obj.fields:
            raise StripeAPIError.invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")
        out[key] = _validate_value(sub, obj.fields[key], name, form)
    for key in sorted(obj.required):
        if key not in value:
            name = _param_name(prefix, key)
            raise StripeAPIError.invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")
    return out


def _validate_value(value: Any, spec: Spec, name: str, form: bool) -> Any:
    if isinstance(value, dict):
        if spec.list_item is not None and all(k.isdigit() for k in value):
            items = [value[k] for k in sorted(value, key=int)]
            return [_validate_value(v, spec.list_item, f"{name}[{i}]", form) for i, v in enumerate(items)]
        if spec.objects:
            errors: list[StripeAPIError] = []
            for obj in spec.objects:
                try:
                    return _validate_object(value, obj, name, form)
                except StripeAPIError as exc:
                    errors.append(exc)
            raise errors[0]
        if spec.map_value is not None:
            return {k: _validate_value(v, spec.map_value, f"{name}[{k}]", form) for k, v in value.items()}
        if "any" in spec.scalars:
            return value
        raise StripeAPIError.invalid(f"Invalid {name}: expected {spec.describe()}, got a hash", param=name)
    if isinstance(value, list):
        if spec.list_item is not None:
            return [_validate_value(v, spec.list_item, f"{name}[{i}]", form) for i, v in enumerate(value)]
        if "any" in spec.scalars:
            return value
        raise StripeAPIError.invalid(f"Invalid {name}: expected {spec.describe()}, got an array", param=name)
    return _validate_scalar(value, spec, name, form)


def _validate_scalar(value: Any, spec: Spec, name: str, form: bool) -> Any:
    if value == "" and spec.allow_empty:
        return ""  # Stripe's "unset this field"
    if value is None and not form:
        return None
    if "any" in spec.scalars:
        return value
    text = value if isinstance(value, str) else None
    if spec.enum is not None and text is not None and text in spec.enum:
        return text
    if "bool" in spec.scalars:
        if isinstance(value, bool):
            return value
        if text in ("true", "false"):
            return text == "true"
    if "int" in spec.scalars:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"-?\d+", text):
            return int(text)
    if "decimal" in spec.scalars or "float" in spec.scalars:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return decimal.Decimal(str(value))
        if text is not None:
            try:
                number = decimal.Decimal(text)
            except decimal.InvalidOperation:
                number = None
            if number is not None and number.is_finite():
                return number
    if "str" in spec.scalars:
        if text is not None:
            return text
        if form:
            return str(value)
    if spec.enum is not None and text is not None:
        choices = ", ".join(sorted(spec.enum))
        also = " or an integer" if "int" in spec.scalars else ""
        raise StripeAPIError.invalid(f"Invalid {name}: must be one of {choices}{also}", param=name)
    if "int" in spec.scalars:
        raise StripeAPIError.invalid(f"Invalid integer: {value}", param=name, code="parameter_invalid_integer")
    if "bool" in spec.scalars:
        raise StripeAPIError.invalid(f"Invalid boolean: {value}", param=name, code=None)
    if "decimal" in spec.scalars or "float" in spec.scalars:
        raise StripeAPIError.invalid(f"Invalid decimal: {value}", param=name, code=None)
    if spec.objects or spec.map_value is not None:
        raise StripeAPIError.invalid(f"Invalid object: {name} must be a hash", param=name, code=None)
    if spec.list_item is not None:
        raise StripeAPIError.invalid(f"Invalid array: {name} must be an array", param=name, code=None)
    raise StripeAPIError.invalid(f"Invalid value for {name}", param=name, code=None)
