"""The on-site label store: Parquet files laid out like SageMaker Feature Store's offline store,
queried with DuckDB (an embedded database: no server to run).

Layout: `{root}/{feature_group}/data/year=YYYY/month=MM/day=DD/hour=HH/{uuid}.parquet`, one file
per `append`, partitioned by the time it was written, as Feature Store writes its offline store.
Files are written once (to a temporary name, then renamed) and never changed: appending can
never damage what is there, and a crash mid-write leaves at most a stray temporary file that no
query reads. The as-of query is `as_of.as_of_sql`, the one Athena runs on AWS.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from cloud.label_table import LabelRecord, safe_relative_path
from cloud.labels.as_of import as_of_sql, check_as_of
from cloud.labels.known import known_sql
from cloud.labels.rules import SetAside, check_versions, versions_from_rows
from cloud.labels.store import LabelStoreError
from cloud.labels.versions import COLUMNS, LabelVersion

DUCKDB_TYPES = {"String": "VARCHAR", "Integral": "BIGINT", "Fractional": "DOUBLE"}


class LocalLabelStore:
    def __init__(self, root: Path, feature_group: str = "edge-inspect-labels") -> None:
        safe_relative_path(feature_group)  # a name, not a path
        self.data = Path(root) / feature_group / "data"
        self.set_aside: list[SetAside] = []

    def append(self, versions: Iterable[LabelVersion]) -> int:
        import duckdb

        rows = [v.columns() for v in check_versions(versions)]
        if not rows:
            return 0
        try:
            return self._write(rows)
        except duckdb.Error as exc:
            raise LabelStoreError(f"label store {self.data}: cannot write: {exc}") from None
        except OSError as exc:  # a full or read-only disk: the caller keeps the versions and retries
            raise LabelStoreError(f"label store {self.data}: cannot write: {exc.strerror or exc}") from None

    def _write(self, rows: list[dict[str, object]]) -> int:
        now = datetime.now(timezone.utc)
        folder = self.data / f"year={now:%Y}" / f"month={now:%m}" / f"day={now:%d}" / f"hour={now:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp, final = folder / f".{name}.parquet.tmp", folder / f"{name}.parquet"
        try:
            self._write_file(rows, tmp, final)
        finally:
            tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        return len(rows)

    @staticmethod
    def _write_file(rows: list[dict[str, object]], tmp: Path, final: Path) -> None:
        import duckdb

        schema = ", ".join(f"{c} {DUCKDB_TYPES[t]}" for c, t in COLUMNS.items())
        with duckdb.connect() as db:
            db.execute(f"CREATE TABLE batch ({schema})")
            db.executemany(f"INSERT INTO batch VALUES ({', '.join('?' for _ in COLUMNS)})",
                           [[row[c] for c in COLUMNS] for row in rows])
            db.execute("COPY batch TO ? (FORMAT parquet)", [str(tmp)])
        with tmp.open("rb") as handle:  # on disk before the name makes it part of the store
            os.fsync(handle.fileno())
        os.replace(tmp, final)

    def _table(self) -> str | None:
        if not any(self.data.glob("year=*/month=*/day=*/hour=*/*.parquet")):
            return None
        pattern = str(self.data / "year=*" / "month=*" / "day=*" / "hour=*" / "*.parquet").replace("'", "''")
        return f"read_parquet('{pattern}', hive_partitioning = false)"

    def _query(self, sql: str, params: list | None = None) -> list[LabelVersion]:
        import duckdb

        try:
            with duckdb.connect() as db:
                cursor = db.execute(sql, params or [])
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        except duckdb.Error as exc:
            raise LabelStoreError(f"label store {self.data}: query failed: {exc}") from None
        versions, self.set_aside = versions_from_rows(rows, f"label store {self.data}")
        return versions

    def as_of(self, as_of: float) -> list[LabelRecord]:
        as_of = check_as_of(as_of)
        self.set_aside = []
        table = self._table()
        return [] if table is None else [v.record for v in self._query(as_of_sql(table, as_of))]

    def known(self, prefix: str) -> list[LabelVersion]:
        self.set_aside = []
        table = self._table()
        return [] if table is None else self._query(known_sql(table, prefix))

    def history(self, source_ref: str) -> list[LabelVersion]:
        self.set_aside = []
        table = self._table()
        if table is None:
            return []
        columns = ", ".join(COLUMNS)
        return self._query(f"SELECT {columns} FROM {table} WHERE source_ref = ? ORDER BY event_time, deleted",
                           [source_ref])
