"""Product tables in Parquet, read and written through pyarrow with astropy's metadata.

A file is what ``Table.write(path, format="parquet")`` writes: one Parquet column per
table column, and in the schema metadata ``table_meta_yaml``, the YAML header with each
column's datatype, unit and description and the table's ``meta`` (astropy's ECSV
header), so ``Table.read(path)`` gives the units, descriptions and meta back.

Why not astropy's own reader and writer: for the small per-frame catalogues of the
pipeline (tens of rows) they cost 10-20 ms a file, nearly all of it in PyYAML's
pure-Python scanner and emitter and in astropy's column bookkeeping, and
``pyarrow.parquet.read_table`` spins up its thread pool for every file. Here the YAML
goes through libyaml (PyYAML's C binding, when built with it) with astropy's
representers and constructors, pyarrow reads on the calling thread, and plain 1-D
columns go to Arrow directly. Tables with other columns (masked, multidimensional,
object, mixins such as ``Time``) are written by astropy as before.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "parquet_bytes",
    "read_parquet",
    "read_parquet_columns",
    "read_parquet_meta",
    "table_yaml",
    "write_parquet",
]

META_KEY = b"table_meta_yaml"
_OMAP = "tag:yaml.org,2002:omap"
#: order of a column's attributes in astropy's header (astropy.table.meta.ColumnOrderList)
_ATTRIBUTE_ORDER = ("name", "unit", "datatype", "format", "description", "meta")

#: files with more rows are decoded on pyarrow's thread pool (starting it costs ~10 ms of CPU)
_THREADED_ROWS = 200_000

_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _ColumnAttributes(dict):
    """A column's header entry; written in astropy's attribute order, not sorted."""


def _represent_column_attributes(dumper: yaml.SafeDumper, data: _ColumnAttributes) -> yaml.MappingNode:
    items = [(dumper.represent_data(k), dumper.represent_data(v)) for k, v in data.items()]
    best = all(isinstance(n, yaml.ScalarNode) and not n.style for pair in items for n in pair)
    node = yaml.MappingNode("tag:yaml.org,2002:map", items, flow_style=None)
    node.flow_style = dumper.default_flow_style if dumper.default_flow_style is not None else best
    return node


def _represent_omap(dumper: yaml.SafeDumper, data: OrderedDict) -> yaml.SequenceNode:
    # astropy.table.meta._repr_odict: a sequence of one-item mappings
    items = [dumper.represent_data({k: v}) for k, v in data.items()]
    best = all(isinstance(n, yaml.ScalarNode) and not n.style for n in items)
    node = yaml.SequenceNode(_OMAP, items, flow_style=None)
    node.flow_style = dumper.default_flow_style if dumper.default_flow_style is not None else best
    return node


def _construct_omap(loader: yaml.SafeLoader, node: yaml.Node):
    # astropy.table.meta._construct_odict: !!omap becomes a dict that keeps the order
    out: dict[Any, Any] = {}
    yield out
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(None, None, "!!omap must be a sequence", node.start_mark)
    for sub in node.value:
        if not isinstance(sub, yaml.MappingNode) or len(sub.value) != 1:
            raise yaml.constructor.ConstructorError(
                None, None, "!!omap items must be one-item mappings", sub.start_mark
            )
        key_node, value_node = sub.value[0]
        out[loader.construct_object(key_node)] = loader.construct_object(value_node)


def _yaml_classes() -> tuple[type, type]:
    """(loader, dumper) classes with astropy's constructors and representers on libyaml."""
    from astropy.io.misc.yaml import AstropyDumper, AstropyLoader

    class Loader(_CLoader):  # type: ignore[valid-type, misc]
        pass

    class Dumper(_CDumper):  # type: ignore[valid-type, misc]
        pass

    for tag, fn in AstropyLoader.yaml_constructors.items():
        Loader.add_constructor(tag, fn)
    Loader.add_constructor(_OMAP, _construct_omap)
    for cls, fn in AstropyDumper.yaml_representers.items():
        Dumper.add_representer(cls, fn)
    for cls, fn in AstropyDumper.yaml_multi_representers.items():
        Dumper.add_multi_representer(cls, fn)
    Dumper.add_representer(OrderedDict, _represent_omap)
    Dumper.add_representer(_ColumnAttributes, _represent_column_attributes)
    return Loader, Dumper


_CLASSES: tuple[type, type] | None = None


def _loader_dumper() -> tuple[type, type]:
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _yaml_classes()
    return _CLASSES


def _arrow_array(values: np.ndarray) -> Any:
    """A pyarrow array of a 1-D numpy array. Numbers and booleans are wrapped from their buffers:
    ``pyarrow.array`` imports pandas (0.3 s) to check what it was given."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype.kind == "b":
        bits = pa.py_buffer(np.packbits(values, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, bits])
    if values.dtype.kind in "iuf":
        return pa.Array.from_buffers(
            pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)]
        )
    return pa.array(values)


def _numpy_dtype(arrow_type: Any) -> np.dtype | None:
    """The numpy dtype of an Arrow integer, float or boolean type; None for others."""
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return np.dtype(bool)
    if pa.types.is_floating(arrow_type):
        return np.dtype(f"<f{arrow_type.bit_width // 8}")
    if pa.types.is_integer(arrow_type):
        kind = "i" if pa.types.is_signed_integer(arrow_type) else "u"
        return np.dtype(f"<{kind}{arrow_type.bit_width // 8}")
    return None


def _numpy_values(chunked: Any) -> np.ndarray:
    """A writable numpy copy of a pyarrow column, read from its buffers when it holds numbers or
    booleans without nulls (``to_numpy`` imports pandas); other columns through ``to_numpy``."""
    dtype = _numpy_dtype(chunked.type)
    if dtype is None or chunked.null_count:
        return chunked.to_numpy(zero_copy_only=False)
    parts = []
    for chunk in chunked.chunks:
        start, stop = chunk.offset, chunk.offset + len(chunk)
        data = chunk.buffers()[1]
        if data is None:
            parts.append(np.zeros(0, dtype))
        elif dtype.kind == "b":
            bits = np.unpackbits(np.frombuffer(data, np.uint8), count=stop, bitorder="little")
            parts.append(bits[start:].astype(bool))
        else:
            parts.append(np.frombuffer(data, dtype, count=stop)[start:])
    if not parts:
        return np.zeros(0, dtype)
    return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()


def _datatype(dtype: np.dtype) -> str:
    # astropy.table.meta._get_datatype_from_dtype
    name = dtype.name
    if name.startswith(("bytes", "str")):
        name = "string"
    return name.removesuffix("_")


def _plain(col: Any) -> bool:
    """A column written here: a 1-D numeric, bool or string astropy Column, not masked."""
    from astropy.table import Column

    return type(col) is Column and col.ndim == 1 and col.dtype.kind in "biufSU" and not col.meta


ColumnKey = tuple[str, "str | None", str, "str | None", "str | None"]


@lru_cache(maxsize=64)
def _datatype_yaml(columns: tuple[ColumnKey, ...]) -> str:
    """The ``datatype:`` block of the header; the same columns come back frame after frame."""
    _, dumper = _loader_dumper()
    datatype = []
    for name, unit, dtype, fmt, description in columns:
        attrs = _ColumnAttributes(name=name)
        if unit is not None:
            attrs["unit"] = unit
        attrs["datatype"] = dtype
        if fmt is not None:
            attrs["format"] = fmt
        if description is not None:
            attrs["description"] = description
        datatype.append(attrs)
    return yaml.dump({"datatype": datatype}, Dumper=dumper, default_flow_style=None, width=130)


def table_yaml(table: Table) -> str:
    """The ``table_meta_yaml`` header of a table of plain columns (astropy's text for it).

    The top-level keys are emitted one after the other, as in one document (block style,
    no anchors): ``datatype`` from a cache, ``meta`` per table.
    """
    _, dumper = _loader_dumper()
    columns = tuple(
        (
            name,
            None if col.unit is None else str(col.unit),
            _datatype(col.dtype),
            col.format,
            col.description,
        )
        for name, col in table.columns.items()
    )
    if all(isinstance(c[3], str | None) and isinstance(c[4], str | None) for c in columns):
        text = _datatype_yaml(columns)
    else:
        text = _datatype_yaml.__wrapped__(columns)
    if table.meta:
        text += yaml.dump(
            {"meta": OrderedDict(table.meta)}, Dumper=dumper, default_flow_style=None, width=130
        )
    return "\n".join(text.splitlines())


def write_parquet(table: Table, path: str | Path) -> Path:
    """Write ``table`` as astropy would (same columns, same ``table_meta_yaml``); returns ``path``.

    An existing file is replaced (write to a temporary name and rename for atomicity,
    e.g. :func:`darkroom.io.atomic.atomic_path`).
    """
    path = Path(path)
    if not _write_arrow(table, path):
        table.write(path, format="parquet", overwrite=True)
    return path


def parquet_bytes(table: Table) -> bytes:
    """The bytes :func:`write_parquet` writes for ``table``, made in memory (to be written by
    another thread, or hashed without reading the file back)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    if _write_arrow(table, sink):
        return sink.getvalue().to_pybytes()
    with tempfile.TemporaryDirectory() as tmp:  # columns only astropy's writer takes
        path = Path(tmp) / "table.parquet"
        table.write(path, format="parquet", overwrite=True)
        return path.read_bytes()


def _write_arrow(table: Table, where) -> bool:
    """Write ``table`` to ``where`` (a path or an Arrow output stream) as astropy would; False
    (nothing written) when a column is not plain and astropy's own writer must do it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not all(_plain(col) for col in table.columns.values()):
        return False
    header = table_yaml(table).encode("utf-8")
    metadata = {}
    for name, col in table.columns.items():
        # Parquet keeps the type of a string column, not its width; keys in astropy's order
        if col.dtype.kind == "U":
            metadata[f"table::len::{name}".encode()] = str(col.dtype.itemsize // 4).encode()
        elif col.dtype.kind == "S":
            metadata[f"table::len::{name}".encode()] = str(col.dtype.itemsize).encode()
        metadata[META_KEY] = header
    # Parquet is little-endian (columns read from FITS are big-endian)
    arrays = [
        _arrow_array(np.asarray(col).astype(col.dtype.newbyteorder("<"), copy=False))
        for col in table.columns.values()
    ]
    schema = pa.schema(
        [pa.field(name, arr.type) for name, arr in zip(table.colnames, arrays, strict=True)],
        metadata=metadata,
    )
    with pq.ParquetWriter(where, schema, version="2.4") as writer:
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return True


def _header(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    loader, _ = _loader_dumper()
    return yaml.load(raw.decode("utf-8"), Loader=loader) or {}


def read_parquet_meta(path: str | Path) -> dict[str, Any]:
    """The table ``meta`` of a Parquet file (its schema only is read); {} without one."""
    import pyarrow.parquet as pq

    header = _header((pq.read_schema(path).metadata or {}).get(META_KEY))
    return dict(header.get("meta") or {})


def read_parquet(path: str | Path, columns: Sequence[str] | None = None, *, meta: bool = False) -> Table:
    """A Parquet table with its columns' units and descriptions; ``columns`` picks some.

    Read on the calling thread (pyarrow's threads for large reference catalogues). String columns come back as object columns (Python
    strings), columns with nulls as masked columns. The table ``meta`` is kept only with
    ``meta=True``.
    """
    import pyarrow.parquet as pq
    from astropy.table import Column, MaskedColumn, Table

    with pq.ParquetFile(path) as pf:
        arrow = pf.read(
            columns=list(columns) if columns is not None else None,
            use_threads=pf.metadata.num_rows > _THREADED_ROWS,
        )
    header = _header((arrow.schema.metadata or {}).get(META_KEY))
    attrs: Mapping[str, dict[str, Any]] = {c["name"]: c for c in header.get("datatype", ()) if "name" in c}
    cols = []
    for name in arrow.column_names:
        chunked = arrow.column(name)
        values = _numpy_values(chunked)
        a = attrs.get(name, {})
        kwargs = {"name": name, "unit": a.get("unit") or None, "description": a.get("description") or None}
        if chunked.null_count:
            nulls = _numpy_values(chunked.is_null())
            cols.append(MaskedColumn(values, mask=nulls, **kwargs))
        else:
            cols.append(Column(values, copy=False, **kwargs))
    table = Table(cols, copy=False)
    if meta:
        table.meta.update(header.get("meta") or {})
    return table


def read_parquet_columns(path: str | Path, columns: Sequence[str]) -> tuple[int, dict[str, np.ndarray]]:
    """(number of rows, {name: values}) of those of ``columns`` the file has; no units, no meta.

    The quick read for code that wants a few arrays of a catalogue (no YAML, no Table).
    Nulls become NaN in float columns (the pipeline's catalogues have none).
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        present = set(pf.schema_arrow.names)
        wanted = [c for c in columns if c in present]
        arrow = pf.read(columns=wanted, use_threads=False)
    return arrow.num_rows, {name: _numpy_values(arrow.column(name)) for name in wanted}
