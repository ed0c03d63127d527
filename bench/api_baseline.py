"""The api_load pair's baseline: the least an HTTP endpoint can do for a render request, run from the same
api image as the API (same Python, uvicorn, FastAPI, SQLAlchemy, psycopg and redis-py), on the same Redis and
Postgres: parse the JSON body, one Postgres INSERT (pooled connection), one Redis LPUSH, answer 202.

Mounted into a container of the api image by bench/api_load.py and started as `uvicorn api_baseline:app`.
It reads the services the way the API does (RENDERFARM_* variables, password files), and its table
(`bench_baseline`) is made at start-up and dropped by the bench afterwards.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from renderfarm.clients import make_engine, make_redis
from renderfarm.settings import ServiceSettings

TABLE = "bench_baseline"
LIST = "bench:baseline"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service = ServiceSettings.from_env()
    engine = make_engine(service)  # the API's own pool and timeouts
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body jsonb NOT NULL)"))
    app.state.engine = engine
    app.state.redis = make_redis(service)
    yield
    engine.dispose()
    app.state.redis.close()


app = FastAPI(lifespan=lifespan)


@app.post("/baseline", status_code=202)
def baseline(body: dict[str, Any], request: Request) -> JSONResponse:
    with request.app.state.engine.begin() as conn:
        row = conn.execute(
            text(f"INSERT INTO {TABLE} (body) VALUES (CAST(:body AS jsonb)) RETURNING id"), {"body": json.dumps(body)}
        ).scalar_one()
    request.app.state.redis.lpush(LIST, row)
    return JSONResponse({"id": row}, status_code=202)
