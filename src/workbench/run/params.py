"""Read a notebook's ``parameters`` cell and check values against it before anything runs.

The runner refuses bad parameters up front (exit code 2, no kernel, nothing in the store):
an unknown name is reported with the valid names and the closest match, a value of the wrong
type with the type the notebook declares. Types come from the cell's annotations
(``lr: float = 0.1  # help``), else from the default's literal; papermill's own inspection is
the fallback when the cell is not plain Python. Values from the command line arrive as strings
and are converted to the declared type; values from YAML files are already typed and only
checked.
"""

from __future__ import annotations

import ast
import difflib
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BASIC = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
_BASIC.update({"tuple": tuple, "None": type(None), "NoneType": type(None)})
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ParameterError(ValueError):
    """A parameter the notebook does not declare, or a value of the wrong type."""


@dataclass(frozen=True)
class ParamSpec:
    """One line of the parameters cell."""

    name: str
    type_name: str  # as written ("float", "str | None") or inferred from the default; "" = any
    default: str  # the default's source text
    help: str = ""

    def allowed(self) -> tuple[type, ...] | None:
        """The Python types a value may have, or None when any value goes."""
        return _types_of(self.type_name)

    def choices(self) -> tuple[Any, ...] | None:
        """The values of a ``Literal[...]`` annotation, if that is the declared type."""
        try:
            node = ast.parse(self.type_name, mode="eval").body
        except SyntaxError:
            return None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("Literal"):
            sl = node.slice
            elts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
            try:
                return tuple(ast.literal_eval(e) for e in elts)
            except ValueError:
                return None
        return None


def _types_of(type_name: str) -> tuple[type, ...] | None:
    if not type_name or type_name in ("Any", "object", "typing.Any"):
        return None
    try:
        node = ast.parse(type_name, mode="eval").body
    except SyntaxError:
        return None
    found: list[type] = []

    def walk(n: ast.AST) -> bool:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            return walk(n.left) and walk(n.right)
        if isinstance(n, ast.Constant) and n.value is None:
            found.append(type(None))
            return True
        if isinstance(n, ast.Subscript):
            head = ast.unparse(n.value).split(".")[-1]
            sl = n.slice
            args = sl.elts if isinstance(sl, ast.Tuple) else [sl]
            if head == "Optional":
                found.append(type(None))
                return all(walk(a) for a in args)
            if head == "Union":
                return all(walk(a) for a in args)
            if head == "Literal":
                vals = [a.value for a in args if isinstance(a, ast.Constant)]
                found.extend({type(v) for v in vals})
                return len(vals) == len(args)
            return walk(n.value)  # list[int] -> list
        name = ast.unparse(n).split(".")[-1]
        if name in _BASIC or name.lower() in _BASIC:
            found.append(_BASIC.get(name) or _BASIC[name.lower()])
            return True
        return False

    return tuple(dict.fromkeys(found)) if walk(node) else None


def parameters_cell(nb) -> Any | None:
    """The first code cell tagged ``parameters``, or None."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def inspect(notebook: str | Path) -> dict[str, ParamSpec]:
    """The parameters a notebook declares (empty when it has no ``parameters`` cell)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = parameters_cell(nb)
    if cell is None:
        return {}
    try:
        return _parse_source(cell.source)
    except SyntaxError:  # magics or another language: papermill's line-based reading
        import papermill

        return {
            name: ParamSpec(
                name,
                "" if p["inferred_type_name"] == "None" else p["inferred_type_name"],
                p["default"],
                p["help"],
            )
            for name, p in papermill.inspect_notebook(str(notebook)).items()
        }


def _parse_source(source: str) -> dict[str, ParamSpec]:
    tree = ast.parse(source)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    specs: dict[str, ParamSpec] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            targets, annotation, value = [stmt.target], ast.unparse(stmt.annotation), stmt.value
        elif isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            targets, annotation, value = stmt.targets, "", stmt.value
        else:
            continue
        default = ast.unparse(value) if value is not None else ""
        type_name = annotation or _literal_type(value)
        help_text = comments.get(stmt.end_lineno or stmt.lineno, "")
        for t in targets:
            specs[t.id] = ParamSpec(t.id, type_name, default, help_text)
    return specs


def _literal_type(value: ast.AST | None) -> str:
    """The type of an unannotated default, when it is a literal other than None."""
    if value is None:
        return ""
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ""
    return "" if v is None else type(v).__name__


def closest(name: str, names: list[str]) -> str | None:
    match = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name_message(name: str, specs: dict[str, ParamSpec], notebook: str | Path) -> str:
    if not specs:
        return (
            f"{notebook} has no cell tagged 'parameters', so it takes no parameter {name!r}.\n"
            "fix: drop the parameter, or tag the notebook's parameter cell 'parameters'."
        )
    valid = sorted(specs)
    near = closest(name, valid)
    hint = f" Did you mean {near!r}?" if near else ""
    return f"{notebook} has no parameter {name!r}.{hint}\nvalid parameters: {', '.join(valid)}"


def convert_text(spec: ParamSpec, raw: str) -> Any:
    """Turn a command-line string into the declared type, or raise ParameterError."""
    allowed = spec.allowed()
    if allowed is None:
        return _yaml_scalar(raw)
    order = sorted(allowed, key=lambda t: (t is str, t is not type(None)))  # None first, str last
    for t in order:
        try:
            value = _from_text(t, raw)
        except ValueError:
            continue
        return check_value(spec, value)
    raise ParameterError(_type_message(spec, raw))


def _from_text(t: type, raw: str) -> Any:
    text = raw.strip()
    if t is type(None):
        if text in ("None", "null", "~", ""):
            return None
        raise ValueError(raw)
    if t is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(raw)
    if t is int:
        return int(text)
    if t is float:
        return float(text)
    if t is str:
        return raw
    value = _yaml_scalar(raw)
    if t is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, t):
        raise ValueError(raw)
    return value


def _yaml_scalar(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def check_value(spec: ParamSpec, value: Any) -> Any:
    """Check an already typed value (from YAML) against the declared type; ints pass as
    floats, but bools never pass as numbers."""
    allowed = spec.allowed()
    if allowed is not None:
        ok = any(
            (isinstance(value, t) and not (isinstance(value, bool) and t in (int, float)))
            for t in allowed
        )
        if not ok and float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok and tuple in allowed and isinstance(value, list):
            value, ok = tuple(value), True
        if not ok:
            raise ParameterError(_type_message(spec, value))
    choices = spec.choices()
    if choices is not None and value not in choices:
        raise ParameterError(
            f"parameter {spec.name!r} must be one of {', '.join(map(repr, choices))}; got {value!r}"
        )
    return value


def _type_message(spec: ParamSpec, value: Any) -> str:
    got = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
    extra = f"; {spec.help}" if spec.help else ""
    return f"parameter {spec.name!r} expects {spec.type_name}, got {got}  [default {spec.default}{extra}]"


def resolve(
    notebook: str | Path,
    specs: dict[str, ParamSpec],
    *,
    texts: list[tuple[str, str]] = (),
    values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate typed ``values`` (files, batch sets) then command-line ``texts`` (which win)
    and return the parameters to inject. Raises ParameterError on the first problem."""
    out: dict[str, Any] = {}
    for name, value in (values or {}).items():
        if name not in specs:
            raise ParameterError(unknown_name_message(name, specs, notebook))
        out[name] = check_value(specs[name], value)
    for name, raw in texts:
        if name not in specs:
            raise ParameterError(unknown_name_message(name, specs, notebook))
        out[name] = convert_text(specs[name], raw)
    return out


def default_value(spec: ParamSpec) -> Any:
    """The default as a Python value when it is a literal, else its source text."""
    try:
        return ast.literal_eval(spec.default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return spec.default
