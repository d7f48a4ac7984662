"""What a scoring request says: MLflow's four JSON formats or CSV, read into a DataFrame
after the checks MLflow does not make (a JSON number where the signature says text, more rows
than the server takes). Messages say what to change; underlying errors go in ``detail``
(the server log), never to the client.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from workbench.serve.model import RequestError, schema_message

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
DEFAULT_MAX_ROWS = 100_000


def parse_request(
    body: bytes, content_type: str | None, schema, *, max_rows: int = DEFAULT_MAX_ROWS
) -> pd.DataFrame:
    """Turn a scoring request into a DataFrame, or raise ``RequestError`` saying what is wrong.

    More than ``max_rows`` rows is refused (413) before a table is built from JSON.
    """
    mime = (content_type or "application/json").split(";")[0].strip().lower()
    if mime == "text/csv":
        return _check_rows(_parse_csv(body, schema), max_rows)
    if mime != "application/json":
        raise RequestError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"content type {mime[:100]!r} is not supported; send application/json or text/csv",
        )
    payload = _parse_json(body)
    keys = [k for k in FORMATS if isinstance(payload, dict) and k in payload]
    if len(keys) != 1:
        got = list(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        raise RequestError(
            400,
            "BAD_REQUEST",
            f"the body must be a JSON object with exactly one of {', '.join(FORMATS)} (got {got}); e.g. "
            '{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}',
        )
    key = keys[0]
    _check_rows(_json_rows(key, payload[key]), max_rows)
    _check_types(key, payload[key], schema)
    return _as_frame(key, payload[key], schema)


def _parse_csv(body: bytes, schema) -> pd.DataFrame:
    import io

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import parse_csv_input

    try:
        return parse_csv_input(io.StringIO(body.decode("utf-8")), schema=schema)
    except (MlflowException, UnicodeDecodeError) as exc:
        raise RequestError(
            400,
            "BAD_REQUEST",
            "cannot read the CSV body (UTF-8, a header line, one row a line)",
            detail=str(exc),
        ) from exc


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise RequestError(400, "MALFORMED_JSON", f"the body is not valid JSON ({where})") from exc
    except UnicodeDecodeError as exc:
        raise RequestError(400, "MALFORMED_JSON", "the body is not valid JSON (not UTF-8)") from exc


def _as_frame(key: str, value: Any, schema) -> pd.DataFrame:
    """The table MLflow's own parser reads from one format's value."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    unreadable = f"cannot read {key} as a table: give one value a row for each of its columns"
    try:
        data = infer_and_parse_data({key: value}, schema)
    except MlflowException as exc:
        if "signature" in exc.message or "convert" in exc.message:
            raise RequestError(422, "SCHEMA_MISMATCH", schema_message(exc.message)) from exc
        raise RequestError(400, "BAD_REQUEST", unreadable, detail=exc.message) from exc
    except Exception as exc:  # pandas complains about shapes and columns in many ways
        raise RequestError(400, "BAD_REQUEST", unreadable, detail=str(exc)) from exc
    if isinstance(data, dict | list):
        try:
            data = pd.DataFrame(data)
        except Exception as exc:
            raise RequestError(400, "BAD_REQUEST", unreadable, detail=str(exc)) from exc
    return data


def _json_rows(key: str, value: Any) -> int:
    """How many rows a format's value holds, counted without building anything."""
    if key == "dataframe_split" and isinstance(value, dict):
        data = value.get("data")
        return len(data) if isinstance(data, list) else 1
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):  # columns of values
        return max((len(v) for v in value.values() if isinstance(v, list)), default=1)
    return 1


def _check_rows(rows: int | pd.DataFrame, max_rows: int):
    """Refuse more than ``max_rows`` rows (413), naming the limit and the option."""
    count = len(rows) if isinstance(rows, pd.DataFrame) else rows
    if count > max_rows:
        raise RequestError(
            413,
            "TOO_MANY_ROWS",
            f"{count} rows is more than this server's limit of {max_rows} rows a request; "
            "send them in smaller batches, or start the server with a larger --max-rows",
        )
    return rows


_JSON_KINDS = {
    "string": (str,),
    "double": (int, float),
    "float": (int, float),
    "long": (int,),
    "integer": (int,),
    "boolean": (bool,),
}


def _check_types(fmt: str, body: Any, schema) -> None:
    """Refuse JSON values of the wrong kind for a column (a number where the signature says
    string, text where it says double): MLflow would silently cast the first."""
    if schema is None or not schema.has_input_names():
        return
    kinds = {}
    for spec in schema.inputs:
        kind = str(getattr(spec, "type", "")).lower().split(".")[-1]
        if getattr(spec, "name", None) and kind in _JSON_KINDS:
            kinds[spec.name] = kind
    if fmt == "dataframe_split" and isinstance(body, dict):
        columns = body.get("columns") or []
        rows = body.get("data") or []
        records = (dict(zip(columns, r, strict=False)) for r in rows if isinstance(r, list))
    elif fmt == "dataframe_records" and isinstance(body, list):
        records = (r for r in body if isinstance(r, dict))
    else:
        return
    for i, record in enumerate(records):
        for column, value in record.items():
            kind = kinds.get(column)
            if kind is None or value is None:
                continue
            ok = isinstance(value, _JSON_KINDS[kind]) and (
                kind == "boolean" or not isinstance(value, bool)
            )
            whole = kind in ("long", "integer") and isinstance(value, float) and value.is_integer()
            ok = ok or whole
            if not ok and not (kind in ("double", "float") and value in ("NaN", "nan")):
                raise RequestError(
                    422,
                    "SCHEMA_MISMATCH",
                    f"column {str(column)[:100]!r} expects {kind} values, got {repr(value)[:100]} "
                    f"({type(value).__name__}) in row {i}",
                )
