"""Per image, what the label store knows, in one query over the whole store (DuckDB on site,
Athena on AWS, the same SQL): its latest APPROVED version, or, when none is approved, its latest
version of any status (deletions included).

What a labeling state rebuilt from the store needs (cloud.labeling.rebuild), and what tells a
first start from a lost state file. One query for every image, not one per image: on AWS each
query is an Athena run.
"""

from __future__ import annotations

from cloud.label_table import APPROVED
from cloud.labels.as_of import _TABLE
from cloud.labels.versions import COLUMNS


def known_sql(table: str, prefix: str) -> str:
    """The query over `table` (a name or a DuckDB `read_parquet(...)` call built by this package;
    never user text) for the images whose source_ref starts with `prefix` (the bucket's raw
    prefix, checked by the storage settings; quoted here all the same)."""
    if not (_TABLE.match(table) or table.startswith("read_parquet(")):
        raise ValueError(f"not a table name: {table!r}")
    if not prefix or any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise ValueError(f"not a key prefix: {prefix!r}")
    literal = "'" + prefix.replace("'", "''") + "'"  # in DuckDB and Trino literals only `'` is special
    columns = ", ".join(COLUMNS)
    approved = f"CASE WHEN status = '{APPROVED}' AND deleted = 0 THEN 1 ELSE 0 END"
    return (
        f"SELECT {columns} FROM ("
        f"SELECT {columns}, row_number() OVER (PARTITION BY source_ref ORDER BY {approved} DESC, event_time DESC, "
        f"deleted DESC) AS rn FROM {table} WHERE substr(source_ref, 1, {len(prefix)}) = {literal}"
        f") AS known WHERE rn = 1 ORDER BY source_ref"
    )
