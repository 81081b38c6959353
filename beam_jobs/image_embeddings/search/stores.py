"""`search --store pgvector|bigquery`: the images nearest a query in a published store.

The query image is embedded with day D's own model, as for the files store; the store is asked
for the nearest embeddings of D's model fingerprint over D and the days before it. The
similarity is the cosine of the embeddings (the files store's is the centred cosine in the day's
PCA space). BigQuery needs Google credentials and network access: without them the
`VECTOR_SEARCH` query is printed, to run elsewhere, and the search says it did not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date, timedelta

import numpy as np

from beam_jobs.image_embeddings.contract import FINGERPRINT_KEY, join

STORES = ("files", "pgvector", "bigquery")
PGVECTOR_CONN_VARIABLE = "IMAGE_EMBEDDINGS_PGVECTOR_CONN_ID"
PGVECTOR_TABLE_VARIABLE = "IMAGE_EMBEDDINGS_PGVECTOR_TABLE"
BIGQUERY_TABLE_VARIABLE = "IMAGE_EMBEDDINGS_BIGQUERY_TABLE"
GCP_PROJECT_VARIABLE = "IMAGE_EMBEDDINGS_GCP_PROJECT"


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        choices=STORES,
        default="files",
        help="where to search: the day's files (default), or the pgvector or BigQuery table "
        "the DAG's publish task fills (docs/publish.md)",
    )
    parser.add_argument(
        "--pg_uri",
        help="postgresql:// URI of the pgvector database (default: the Airflow connection "
        f"${PGVECTOR_CONN_VARIABLE} given as AIRFLOW_CONN_<ID>)",
    )
    parser.add_argument(
        "--table",
        help=f"the published table (default ${PGVECTOR_TABLE_VARIABLE} or image_embeddings; "
        f"${BIGQUERY_TABLE_VARIABLE} for BigQuery)",
    )


def connection_uri(environ=os.environ) -> str:
    """The pgvector database's URI from the Airflow connection named by the settings."""
    conn_id = environ.get(PGVECTOR_CONN_VARIABLE, "").strip() or "postgres_default"
    variable = "AIRFLOW_CONN_" + conn_id.upper()
    uri = environ.get(variable, "").strip()
    if not uri.startswith(("postgres://", "postgresql://")):
        raise ValueError(f"pass --pg_uri, or set {variable} to a postgresql:// URI")
    return uri


def day_range(day: str, days: int) -> tuple[str, str]:
    """The first and last of D and the days-1 days before it."""
    return (date.fromisoformat(day) - timedelta(days=days - 1)).isoformat(), day


def pgvector_hits(
    uri: str, table: str, vector: np.ndarray, fingerprint: str, days: tuple[str, str], k: int
) -> list[tuple[str, str, float]]:
    """(day, uri, cosine) of the `k` nearest embeddings of `fingerprint` over `days`."""
    import psycopg
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from psycopg import sql

    statement = sql.SQL(
        "SELECT day::text, uri, 1 - (embedding <=> %(query)s) FROM {} "
        "WHERE model_fingerprint = %(fingerprint)s AND day BETWEEN %(first)s AND %(last)s "
        "ORDER BY embedding <=> %(query)s LIMIT %(k)s"
    ).format(sql.Identifier(*table.split(".")))
    with psycopg.connect(uri) as connection:
        register_vector(connection)
        rows = connection.execute(
            statement,
            {
                "query": HalfVector(vector.astype(np.float32)),
                "fingerprint": fingerprint,
                "first": days[0],
                "last": days[1],
                "k": k,
            },
        ).fetchall()
    return [(day, image, float(similarity)) for day, image, similarity in rows]


def bigquery_sql(table: str, vector: np.ndarray, fingerprint: str, days, k: int) -> str:
    """A standalone `VECTOR_SEARCH` for the `k` nearest images, the query vector inlined."""
    values = ", ".join(f"{value:.7g}" for value in vector.astype(np.float64))
    return (
        "SELECT base.day, base.uri, 1 - distance AS similarity FROM VECTOR_SEARCH("
        f"(SELECT * FROM `{table}` WHERE model_fingerprint = {json.dumps(fingerprint)} "
        f"AND day BETWEEN DATE '{days[0]}' AND DATE '{days[1]}'), 'embedding', "
        f"(SELECT [{values}] AS embedding), top_k => {k}, distance_type => 'COSINE') "
        "ORDER BY distance"
    )


def bigquery_table(args: argparse.Namespace, environ=os.environ) -> str:
    table = args.table or environ.get(BIGQUERY_TABLE_VARIABLE, "").strip()
    if not table:
        raise ValueError(f"pass --table or set {BIGQUERY_TABLE_VARIABLE}")
    project = environ.get(GCP_PROJECT_VARIABLE, "").strip()
    return table if table.count(".") == 2 or not project else f"{project}.{table}"


def bigquery_hits(statement: str) -> list[tuple[str, str, float]] | None:
    """Run the query with the default Google credentials; None when there are none."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import bigquery

    try:
        credentials, project = google.auth.default()
    except DefaultCredentialsError:
        return None
    client = bigquery.Client(credentials=credentials, project=project)
    return [
        (row.day.isoformat(), row.uri, float(row.similarity))
        for row in client.query(statement).result()
    ]


def search_store(args: argparse.Namespace) -> int:
    """`main` for --store pgvector|bigquery: print the hits as the files store does."""
    from beam_jobs.image_embeddings.search import query as search

    try:
        vector, fingerprint = query_vector(args.output_root, args.date, args.image)
        days = day_range(args.date, args.days)
        if args.store == "pgvector":
            table = args.table or os.environ.get(PGVECTOR_TABLE_VARIABLE) or "image_embeddings"
            hits = pgvector_hits(
                args.pg_uri or connection_uri(), table, vector, fingerprint, days, args.k
            )
        else:
            statement = bigquery_sql(bigquery_table(args), vector, fingerprint, days, args.k)
            hits = bigquery_hits(statement)
            if hits is None:
                print(statement)
                print(
                    "search not run: no Google credentials here (BigQuery cannot be reached); "
                    "the VECTOR_SEARCH query above runs with `bq query --nouse_legacy_sql` or "
                    "in the BigQuery console",
                    file=sys.stderr,
                )
                return 3
    except (search.SearchRefused, ValueError) as error:
        print(f"search refused: {error}", file=sys.stderr)
        return 2
    for rank, (day, uri, similarity) in enumerate(hits, start=1):
        print(search.format_hit(search.Hit(rank, similarity, day, uri), args.json))
    return 0


def query_vector(root: str, day: str, image: str) -> tuple[np.ndarray, str]:
    """The query image embedded with day D's model, and that model's fingerprint."""
    from beam_jobs.image_embeddings.search import query as search

    marker = search.read_marker(join(root, day))
    spec, embed = search.day_embedder(marker, day)
    return search.embed_query(image, spec, embed), marker[FINGERPRINT_KEY]
