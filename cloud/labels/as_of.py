"""The dataset as of time T, in one SQL query that DuckDB (on site) and Athena (over Feature
Store's offline store) both run: per `source_ref`, the latest version at or before T that is
APPROVED or a deletion; the image is in the dataset when that version is not a deletion.

Why "APPROVED or a deletion" and not simply the latest version: a frame sent back for a second
look (a PENDING version after an APPROVED one) keeps training with its approved labels until the
review approves new ones; a deletion, though, takes effect at once. At equal event times a
deletion wins.
"""

from __future__ import annotations

import math
import re

from cloud.label_table import APPROVED
from cloud.labels.rules import LATEST_TIME
from cloud.labels.store import LabelStoreError
from cloud.labels.versions import COLUMNS

# dotted parts, each a bare name or a double-quoted one (Athena quotes Glue names: "db"."table");
# nothing else, so no stray quote or `--` comment can slip into the query
_PART = r'(?:[A-Za-z_][A-Za-z0-9_]*|"[A-Za-z0-9_\-]+")'
_TABLE = re.compile(rf"^{_PART}(?:\.{_PART})*$")


def check_as_of(as_of: float) -> float:
    """`as_of` as a float, or LabelStoreError before any query: `nan`, `inf` or a time past year 9999
    would reach the SQL as text the engines read differently (or not at all). Whether a time in the
    future makes sense is the caller's call (`cloud labels export` refuses it: table_io.parse_time)."""
    if isinstance(as_of, bool) or not isinstance(as_of, (int, float)) or not math.isfinite(as_of) \
            or not 0 <= as_of <= LATEST_TIME:
        raise LabelStoreError(f"as-of time {as_of!r} is not a time between 1970 and 9999: give seconds since the "
                              "epoch (or, on the command line, now or ISO 8601)")
    return float(as_of)


def as_of_sql(table: str, as_of: float) -> str:
    """The query over `table` (a name or a DuckDB `read_parquet(...)` call built by this package;
    never user text); `as_of` in seconds since the epoch, checked (`check_as_of`), rendered as a
    number literal."""
    if not (_TABLE.match(table) or table.startswith("read_parquet(")):
        raise ValueError(f"not a table name: {table!r}")
    as_of = check_as_of(as_of)
    columns = ", ".join(COLUMNS)
    return (
        f"SELECT {columns} FROM ("
        f"SELECT {columns}, row_number() OVER (PARTITION BY source_ref ORDER BY event_time DESC, deleted DESC) AS rn "
        f"FROM {table} WHERE event_time <= {float(as_of)!r} AND (status = '{APPROVED}' OR deleted = 1)"
        f") AS latest WHERE rn = 1 AND deleted = 0 ORDER BY source_ref"
    )
