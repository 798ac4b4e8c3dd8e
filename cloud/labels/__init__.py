"""The label store: every version of every label row, append-only, and the dataset as of any time.

- `versions.py`: a label row version (a label-table record, or its deletion) and its columns;
- `rules.py`: what a row must be, checked by every writer before it is written and by every reader
  (a bad stored row is set aside with its reason, the others read);
- `as_of.py`: the one as-of query, the same SQL for the on-site store and for Athena;
- `store.py`: the interface; `local.py` (on site: DuckDB over Parquet laid out like Feature Store's
  offline store) and `feature_store.py` (AWS: SageMaker Feature Store, read back with Athena) beside;
- `table_io.py`: the label table CSV in and out (`edge-inspect train` reads what export writes).
"""
