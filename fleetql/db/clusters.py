"""Queries on clusters and their states: what the API lists, inspects and imports.

Lists and details read one joined statement per page; nothing here ever calls a cluster.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fleetql.db.models import Cluster, ClusterCredential, ClusterState, ClusterStatus
from fleetql.db.reads import Reader, connection_of
from fleetql.db.totals import count_live_clusters
from fleetql.labels import Operator, Requirement


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """A cluster with its latest state, as the API shows it (no credentials)."""

    id: uuid.UUID
    name: str
    description: str
    labels: dict[str, str]
    api_server_url: str
    created_at: datetime
    updated_at: datetime
    status: ClusterStatus
    node_count: int | None
    ready_node_count: int | None
    cpu_capacity_cores: Decimal | None
    cpu_allocatable_cores: Decimal | None
    cpu_usage_cores: Decimal | None
    memory_capacity_bytes: int | None
    memory_allocatable_bytes: int | None
    memory_usage_bytes: int | None
    kubernetes_version: str | None
    last_heartbeat_at: datetime | None
    last_checked_at: datetime | None
    last_error_code: str | None
    last_error_message: str | None
    consecutive_failures: int
    version: int
    credential_kind: str | None
    credential_expires_at: datetime | None
    credential_subject: str | None
    pending_status: str | None


@dataclass(frozen=True)
class ClusterFilter:
    """All given conditions must hold."""

    statuses: Sequence[ClusterStatus] = ()
    search: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    selector: Sequence[Requirement] = ()
    credential_expires_before: datetime | None = None
    # Access control: None, every cluster; otherwise only clusters matching one of these
    # selectors (see fleetql.access.Scope; an empty tuple matches nothing).
    scope: Sequence[Sequence[Requirement]] | None = None


class OrderField(enum.Enum):
    NAME = "name"
    CREATED_AT = "created_at"
    STATUS = "status"
    NODE_COUNT = "node_count"


@dataclass(frozen=True)
class Ordering:
    field: OrderField = OrderField.NAME
    descending: bool = False


# Worst first when ascending, so an operator sorting by status sees trouble at the top.
STATUS_SEVERITY = {
    ClusterStatus.UNREACHABLE: 0,
    ClusterStatus.UNHEALTHY: 1,
    ClusterStatus.DEGRADED: 2,
    ClusterStatus.UNKNOWN: 3,
    ClusterStatus.HEALTHY: 4,
}

# Reads are Core statements on the tables, each built once (per shape, for lists): building a
# select of 27 columns, computing its cache key and re-matching the cached result columns to
# the new statement cost about 0.5 ms per statement, a quarter of ``cluster(id)``'s CPU.
# SQLAlchemy caches the compiled form by structure; the values are bound at execution.
_clusters = cast(Table, Cluster.__table__)
_states = cast(Table, ClusterState.__table__)
_C = _clusters.c
_S = _states.c

# In ClusterRecord's field order: a row becomes a record positionally.
_RECORD_COLUMNS = (
    _C.id,
    _C.name,
    _C.description,
    _C.labels,
    _C.api_server_url,
    _C.created_at,
    _C.updated_at,
    _S.status,
    _S.node_count,
    _S.ready_node_count,
    _S.cpu_capacity_cores,
    _S.cpu_allocatable_cores,
    _S.cpu_usage_cores,
    _S.memory_capacity_bytes,
    _S.memory_allocatable_bytes,
    _S.memory_usage_bytes,
    _S.kubernetes_version,
    _S.last_heartbeat_at,
    _S.last_checked_at,
    _S.last_error_code,
    _S.last_error_message,
    _S.consecutive_failures,
    _C.version,
    _C.credential_kind,
    _C.credential_expires_at,
    _C.credential_subject,
    _S.pending_status,
)
if [column.key for column in _RECORD_COLUMNS] != [spec.name for spec in fields(ClusterRecord)]:
    raise AssertionError("_RECORD_COLUMNS must list ClusterRecord's fields in order")
_RECORD_WIDTH = len(_RECORD_COLUMNS)
_STATUS_AT = [column.key for column in _RECORD_COLUMNS].index("status")

_LIVE_CLUSTERS: Select[*tuple[Any, ...]] = (
    select(*_RECORD_COLUMNS)
    .join_from(_clusters, _states, _S.cluster_id == _C.id)
    .where(_C.deleted_at.is_(None))
)
_IDS = bindparam("cluster_ids", type_=ARRAY(_C.id.type))
_GET_CLUSTER = _LIVE_CLUSTERS.where(_C.id == bindparam("cluster_id", type_=_C.id.type))
# ``= ANY($1)``, not ``IN ($1, $2, …)``: one SQL text (and one prepared statement) for any
# number of ids.
_GET_CLUSTERS = _LIVE_CLUSTERS.where(_C.id == any_(_IDS))
_CLUSTER_LABELS = select(_C.id, _C.labels).where(_C.id == any_(_IDS))
_OFFSET = bindparam("offset", type_=Integer())
_LIMIT = bindparam("limit", type_=Integer())


def _to_record(row: Any) -> ClusterRecord:
    """The record of a row of ``_LIVE_CLUSTERS`` (columns after the record's are ignored)."""
    values = list(row[:_RECORD_WIDTH])
    values[_STATUS_AT] = ClusterStatus(values[_STATUS_AT])
    return ClusterRecord(*values)


def escape_like(text: str) -> str:
    """Make ``%``, ``_`` and the escape character itself literal in a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _requirement_condition(requirement: Requirement) -> ColumnElement[bool]:
    # Containment (@>) and key existence (?) are what the GIN index on labels serves.
    key = requirement.key

    def has(value: str) -> ColumnElement[bool]:
        return _C.labels.contains({key: value})

    def any_of(values: Sequence[str]) -> ColumnElement[bool]:
        return or_(*(has(value) for value in values)) if values else false()

    match requirement.operator:
        case Operator.EQUALS:
            return has(requirement.values[0])
        case Operator.NOT_EQUALS:
            return not_(has(requirement.values[0]))
        case Operator.IN:
            return any_of(requirement.values)
        case Operator.NOT_IN:
            return not_(any_of(requirement.values))
        case Operator.EXISTS:
            return _C.labels.has_key(key)  # type: ignore[no-any-return]
        case Operator.DOES_NOT_EXIST:
            return not_(_C.labels.has_key(key))  # type: ignore[no-any-return]
    raise AssertionError(f"unhandled selector operator {requirement.operator}")


def scope_condition(scope: Sequence[Sequence[Requirement]]) -> ColumnElement[bool]:
    """Clusters matching any of the selectors; none when there are none."""
    return or_(
        false(),
        *(and_(true(), *map(_requirement_condition, selector)) for selector in scope),
    )


ScopeKey = tuple[tuple[Requirement, ...], ...]


def scope_key(scope: Sequence[Sequence[Requirement]]) -> ScopeKey:
    """``scope`` as a key of cached statements (a principal's few scopes each get theirs)."""
    return tuple(tuple(selector) for selector in scope)


@dataclass(frozen=True, slots=True)
class FilterShape:
    """What a statement for a ClusterFilter looks like: which conditions it has, and the
    selectors and scope, whose values are part of the statement (there are few of them). The
    other values are bound at execution (``filter_params``)."""

    scope: ScopeKey | None
    statuses: bool
    search: bool
    labels: bool
    selector: tuple[Requirement, ...]
    expires_before: bool

    @classmethod
    def of(cls, where: ClusterFilter) -> FilterShape:
        return cls(
            scope=None if where.scope is None else scope_key(where.scope),
            statuses=bool(where.statuses),
            search=bool(where.search),
            labels=bool(where.labels),
            selector=tuple(where.selector),
            expires_before=where.credential_expires_before is not None,
        )


_STATUSES = bindparam("statuses", type_=ARRAY(Text()))
_PATTERN = bindparam("pattern", type_=Text())


def shape_conditions(shape: FilterShape) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if shape.scope is not None:
        conditions.append(scope_condition(shape.scope))
    if shape.statuses:
        conditions.append(_S.status == any_(_STATUSES))
    if shape.search:
        conditions.append(
            or_(_C.name.ilike(_PATTERN, escape="\\"), _C.description.ilike(_PATTERN, escape="\\"))
        )
    if shape.labels:
        conditions.append(_C.labels.contains(bindparam("labels", type_=_C.labels.type)))
    conditions.extend(_requirement_condition(requirement) for requirement in shape.selector)
    if shape.expires_before:
        expires_before = bindparam("expires_before", type_=_C.credential_expires_at.type)
        conditions.append(_C.credential_expires_at < expires_before)
    return conditions


def filter_params(where: ClusterFilter) -> dict[str, Any]:
    """The values ``shape_conditions(FilterShape.of(where))`` binds."""
    params: dict[str, Any] = {}
    if where.statuses:
        params["statuses"] = [status.value for status in where.statuses]
    if where.search:
        params["pattern"] = f"%{escape_like(where.search)}%"
    if where.labels:
        params["labels"] = dict(where.labels)
    if where.credential_expires_before is not None:
        params["expires_before"] = where.credential_expires_before
    return params


def _sort_key(field: OrderField) -> Any:
    match field:
        case OrderField.NAME:
            return _C.name
        case OrderField.CREATED_AT:
            return _C.created_at
        case OrderField.STATUS:
            return case(
                {status.value: rank for status, rank in STATUS_SEVERITY.items()},
                value=_S.status,
            )
        case OrderField.NODE_COUNT:
            return _S.node_count


@dataclass(frozen=True)
class Keyset:
    """Where a page ended: the last cluster's sort key (as ``sort_key_of`` gives it) and id.
    The next page starts right after it, whatever was added or removed before it meanwhile."""

    key: Any
    id: uuid.UUID


def sort_key_of(record: ClusterRecord, field: OrderField) -> Any:
    """The value ``field`` orders ``record`` by (a status's severity rank, not its name)."""
    match field:
        case OrderField.NAME:
            return record.name
        case OrderField.CREATED_AT:
            return record.created_at
        case OrderField.STATUS:
            return STATUS_SEVERITY[record.status]
        case OrderField.NODE_COUNT:
            return record.node_count


class _After(enum.Enum):
    """Whether a page starts after a keyset, and whether that keyset's sort key is null (the
    two need different conditions)."""

    NOWHERE = "nowhere"
    KEY = "key"
    NULL_KEY = "null key"

    @classmethod
    def of(cls, after: Keyset | None) -> _After:
        if after is None:
            return cls.NOWHERE
        return cls.NULL_KEY if after.key is None else cls.KEY


def _after_params(after: Keyset | None) -> dict[str, Any]:
    if after is None:
        return {}
    return (
        {"after_id": after.id}
        if after.key is None
        else {"after_key": after.key, "after_id": after.id}
    )


def _after(ordering: Ordering, after: _After, *, key: Any, cluster_id: Any) -> ColumnElement[bool]:
    """Rows ordered after the keyset (``after_key``, ``after_id``) by ``key`` (nulls last) then
    id, ascending or descending."""
    after_id = bindparam("after_id", type_=_C.id.type)
    later = cluster_id < after_id if ordering.descending else cluster_id > after_id
    if after is _After.NULL_KEY:  # in the nulls at the end: only the id orders them
        return and_(key.is_(None), later)
    after_key = bindparam("after_key", type_=key.type)
    beyond = key < after_key if ordering.descending else key > after_key
    return or_(beyond, and_(key == after_key, later), key.is_(None))


def _order_by(ordering: Ordering, *, key: Any = None, cluster_id: Any = None) -> list[Any]:
    """ORDER BY terms for ``ordering``; ``key`` and ``cluster_id`` stand for the sort key and the
    id when ordering a CTE that carries them."""
    column = _sort_key(ordering.field) if key is None else key
    identity = _C.id if cluster_id is None else cluster_id
    primary = column.desc().nulls_last() if ordering.descending else column.asc().nulls_last()
    # The id breaks ties so that pages never repeat or skip a cluster.
    tie_break = identity.desc() if ordering.descending else identity.asc()
    return [primary, tie_break]


async def list_clusters(
    reader: Reader,
    where: ClusterFilter,
    *,
    ordering: Ordering,
    offset: int,
    limit: int,
    count: bool = True,
    after: Keyset | None = None,
) -> tuple[int | None, list[ClusterRecord]]:
    """One page of clusters and, with ``count``, the total that match ``where``.

    The total is an exact count, which at 100,000 clusters costs more than the page itself;
    the API runs it only when the client asks for ``total``. With ``after``, the page starts
    after that cluster (keyset pagination: every page costs what the first one does).
    """
    connection = await connection_of(reader)
    shape = FilterShape.of(where)
    params = filter_params(where)
    if where.search:
        return await _list_searched(
            connection,
            shape,
            params,
            ordering=ordering,
            offset=offset,
            limit=limit,
            count=count,
            after=after,
        )
    total = None
    if count:
        total = await _count(connection, where, shape, params)
        if limit == 0 or offset >= total:
            return total, []
    elif limit == 0:
        return None, []
    page_query = _page_statement(shape, ordering, _After.of(after))
    params.update(_after_params(after), offset=offset, limit=limit)
    rows = (await connection.execute(page_query, params)).all()
    return total, [_to_record(row) for row in rows]


@functools.lru_cache(maxsize=512)
def _page_statement(
    shape: FilterShape, ordering: Ordering, after: _After
) -> Select[*tuple[Any, ...]]:
    """A page of an unsearched list, built once per shape, ordering and kind of keyset."""
    conditions = shape_conditions(shape)
    if after is not _After.NOWHERE:
        conditions.append(_after(ordering, after, key=_sort_key(ordering.field), cluster_id=_C.id))
    if ordering.field in (OrderField.NAME, OrderField.CREATED_AT) and not shape.statuses:
        # Page over clusters alone (an index walk), then fetch the states of those 20 rows:
        # joining first makes a deep page sort or walk thousands of joined rows.
        page_ids = (
            select(_C.id)
            .where(_C.deleted_at.is_(None), *conditions)
            .order_by(*_order_by(ordering))
            .offset(_OFFSET)
            .limit(_LIMIT)
            .cte("page_ids")
        )
        return _LIVE_CLUSTERS.join(page_ids, page_ids.c.id == _C.id).order_by(*_order_by(ordering))
    return (
        _LIVE_CLUSTERS.where(*conditions)
        .order_by(*_order_by(ordering))
        .offset(_OFFSET)
        .limit(_LIMIT)
    )


@dataclass(frozen=True)
class _Searched:
    page: Select[*tuple[Any, ...]]
    total: Select[*tuple[Any, ...]]


@functools.lru_cache(maxsize=512)
def _searched_statements(
    shape: FilterShape, ordering: Ordering, after: _After, count: bool
) -> _Searched:
    """A page of a search (with its total as a last column, if ``count``) and the total
    alone, built once per shape."""
    with_states = shape.statuses or ordering.field in (OrderField.STATUS, OrderField.NODE_COUNT)
    matching = select(_C.id, _sort_key(ordering.field).label("sort_key")).where(
        _C.deleted_at.is_(None), *shape_conditions(shape)
    )
    if with_states:
        matching = matching.join(_states, _S.cluster_id == _C.id)
    matched = matching.cte("matched").prefix_with("MATERIALIZED")
    total_of_matched = select(func.count()).select_from(matched).scalar_subquery()
    ids = select(matched.c.id)
    if after is not _After.NOWHERE:
        ids = ids.where(_after(ordering, after, key=matched.c.sort_key, cluster_id=matched.c.id))
    page_ids = (
        ids.order_by(*_order_by(ordering, key=matched.c.sort_key, cluster_id=matched.c.id))
        .offset(_OFFSET)
        .limit(_LIMIT)
        .cte("page_ids")
    )
    page = _LIVE_CLUSTERS.join(page_ids, page_ids.c.id == _C.id).order_by(*_order_by(ordering))
    if count:
        page = page.add_columns(total_of_matched.label("total"))
    return _Searched(page=page, total=select(total_of_matched))


async def _list_searched(
    connection: AsyncConnection,
    shape: FilterShape,
    params: dict[str, Any],
    *,
    ordering: Ordering,
    offset: int,
    limit: int,
    count: bool,
    after: Keyset | None,
) -> tuple[int | None, list[ClusterRecord]]:
    """A page (and the total) of a search, matched first and ordered after.

    ``ILIKE '%…%'`` is served by the trigram indexes, but with an ORDER BY … LIMIT the planner
    prefers walking the name index and filtering each row, which at 100,000 clusters visits
    tens of thousands of rows to find 20. A MATERIALIZED CTE fences the match off: PostgreSQL
    collects the matching ids (with their sort key) through the trigram indexes, then sorts
    those few. The page and the total come from one statement, so the match runs once.
    """
    statements = _searched_statements(shape, ordering, _After.of(after), count)
    if limit == 0:
        if not count:
            return None, []
        return int((await connection.execute(statements.total, params)).scalar_one()), []
    page_params = {**params, **_after_params(after), "offset": offset, "limit": limit}
    rows = (await connection.execute(statements.page, page_params)).all()
    records = [_to_record(row) for row in rows]
    if not count:
        return None, records
    if rows:
        total = int(rows[0][_RECORD_WIDTH])
    else:  # past the last page: the total still counts
        total = int((await connection.execute(statements.total, params)).scalar_one())
    return total, records


def counts_from_totals(where: ClusterFilter) -> bool:
    """Whether ``where`` selects the whole fleet or only by status, which ``fleet_totals``
    answers without a scan (a principal with label grants has a scope, and is counted)."""
    return (
        where.scope is None
        and not where.search
        and not where.labels
        and not where.selector
        and where.credential_expires_before is None
    )


async def _count(
    connection: AsyncConnection,
    where: ClusterFilter,
    shape: FilterShape,
    params: dict[str, Any],
) -> int:
    if counts_from_totals(where):
        return await count_live_clusters(connection, [status.value for status in where.statuses])
    return int((await connection.execute(_count_statement(shape), params)).scalar_one())


@functools.lru_cache(maxsize=256)
def _count_statement(shape: FilterShape) -> Select[int]:
    query = (
        select(func.count())
        .select_from(_clusters)
        .where(_C.deleted_at.is_(None), and_(true(), *shape_conditions(shape)))
    )
    if shape.statuses:
        # Only a status filter needs the states; every live cluster has exactly one.
        query = query.join(_states, _S.cluster_id == _C.id)
    return query


@functools.lru_cache(maxsize=256)
def _get_scoped_cluster(scope: ScopeKey) -> Select[*tuple[Any, ...]]:
    """``_GET_CLUSTER`` limited to ``scope``, built once per scope (principals have few)."""
    return _GET_CLUSTER.where(scope_condition(scope))


async def get_cluster(
    reader: Reader,
    cluster_id: uuid.UUID,
    *,
    scope: Sequence[Sequence[Requirement]] | None = None,
) -> ClusterRecord | None:
    """The live cluster, if it is within ``scope``."""
    query = _GET_CLUSTER if scope is None else _get_scoped_cluster(scope_key(scope))
    connection = await connection_of(reader)
    row = (await connection.execute(query, {"cluster_id": cluster_id})).first()
    return None if row is None else _to_record(row)


async def cluster_labels(
    reader: Reader, cluster_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, str]]:
    """The labels of these clusters, removed ones included (access control needs them to
    decide who may see a removal)."""
    if not cluster_ids:
        return {}
    connection = await connection_of(reader)
    rows = await connection.execute(_CLUSTER_LABELS, {"cluster_ids": list(cluster_ids)})
    return {cluster_id: dict(labels) for cluster_id, labels in rows.all()}


async def get_clusters(
    reader: Reader, cluster_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ClusterRecord]:
    """The live clusters among ``cluster_ids``, by id, in one statement."""
    if not cluster_ids:
        return {}
    connection = await connection_of(reader)
    rows = await connection.execute(_GET_CLUSTERS, {"cluster_ids": list(cluster_ids)})
    return {record.id: record for record in map(_to_record, rows.all())}


async def name_is_taken(session: AsyncSession, name: str) -> bool:
    query = select(Cluster.id).where(Cluster.name == name, Cluster.deleted_at.is_(None))
    return (await session.execute(query)).first() is not None


# The partial unique index on live clusters' names (alembic/versions/0001_clusters.py).
NAME_INDEX = "clusters_name_live_key"


@dataclass(frozen=True)
class NewCluster:
    id: uuid.UUID
    name: str
    description: str
    labels: Mapping[str, str]
    api_server_url: str
    kubeconfig_ciphertext: bytes
    kubeconfig_key_id: str
    kubeconfig_format: int
    credential_kind: str | None = None
    credential_expires_at: datetime | None = None
    credential_subject: str | None = None


# What an import writes to ``cluster_credentials`` and to ``clusters``, and the state columns a
# new record shows.
_CREDENTIALS = ("kubeconfig_ciphertext", "kubeconfig_key_id", "kubeconfig_format")
_INSERTED = tuple(spec.name for spec in fields(NewCluster) if spec.name not in _CREDENTIALS)
_STATE_FIELDS = (
    "status",
    "node_count",
    "ready_node_count",
    "cpu_capacity_cores",
    "cpu_allocatable_cores",
    "cpu_usage_cores",
    "memory_capacity_bytes",
    "memory_allocatable_bytes",
    "memory_usage_bytes",
    "kubernetes_version",
    "last_heartbeat_at",
    "last_checked_at",
    "last_error_code",
    "last_error_message",
    "consecutive_failures",
    "pending_status",
)


def _insert_cluster_and_state() -> Select[*tuple[Any, ...]]:
    """One statement for the cluster, its credentials and its state, built once so that its
    compiled form is cached: ``WITH c AS (INSERT INTO clusters … RETURNING …), k AS (INSERT INTO
    cluster_credentials SELECT … FROM c), s AS (INSERT INTO cluster_states SELECT … FROM c
    RETURNING …) SELECT … FROM c JOIN s``."""
    clusters = cast(Table, Cluster.__table__)
    credentials = cast(Table, ClusterCredential.__table__)
    states = cast(Table, ClusterState.__table__)
    new_cluster = (
        insert(clusters)
        .values({name: bindparam(name, type_=clusters.c[name].type) for name in _INSERTED})
        .returning(clusters.c.id, clusters.c.created_at, clusters.c.updated_at, clusters.c.version)
        .cte("new_cluster")
    )
    new_credentials = (
        insert(credentials)
        .from_select(
            ["cluster_id", *_CREDENTIALS],
            select(
                new_cluster.c.id,
                *(bindparam(name, type_=credentials.c[name].type) for name in _CREDENTIALS),
            ),
        )
        .returning(credentials.c.cluster_id)
        .cte("new_credentials")
    )
    new_state = (
        insert(states)
        .from_select(
            ["cluster_id", "status"],
            select(new_cluster.c.id, literal(ClusterStatus.UNKNOWN.value, type_=Text())),
        )
        .returning(*(states.c[name] for name in ("cluster_id", *_STATE_FIELDS)))
        .cte("new_state")
    )
    query: Select[*tuple[Any, ...]] = select(
        new_cluster.c.created_at,
        new_cluster.c.updated_at,
        new_cluster.c.version,
        *(new_state.c[name] for name in _STATE_FIELDS),
    ).join_from(
        new_cluster.join(new_credentials, new_credentials.c.cluster_id == new_cluster.c.id),
        new_state,
        new_state.c.cluster_id == new_cluster.c.id,
    )
    return query


_INSERT_CLUSTER = _insert_cluster_and_state()


async def insert_cluster(session: AsyncSession, new: NewCluster) -> ClusterRecord:
    """Add the cluster and its UNKNOWN state, due for a check at once, in one Core statement,
    and return the record as stored (no read-back). The caller commits; an import of a name a
    live cluster has fails on the partial unique index ``clusters_name_live_key``
    (IntegrityError, see ``is_name_conflict``)."""
    params = {name: getattr(new, name) for name in (*_INSERTED, *_CREDENTIALS)}
    params["labels"] = dict(new.labels)
    connection = await session.connection()
    row = (await connection.execute(_INSERT_CLUSTER, params)).one()
    stored = row._mapping
    return ClusterRecord(
        id=new.id,
        name=new.name,
        description=new.description,
        labels=dict(new.labels),
        api_server_url=new.api_server_url,
        created_at=stored["created_at"],
        updated_at=stored["updated_at"],
        version=stored["version"],
        credential_kind=new.credential_kind,
        credential_expires_at=new.credential_expires_at,
        credential_subject=new.credential_subject,
        **{name: stored[name] for name in _STATE_FIELDS if name != "status"},
        status=ClusterStatus(stored["status"]),
    )


def is_name_conflict(error: IntegrityError) -> bool:
    """Whether ``error`` is the live-name unique index refusing a second live cluster."""
    return NAME_INDEX in str(error.orig)


async def find_cluster_id(session: AsyncSession, name: str) -> uuid.UUID | None:
    """The id of the live cluster called ``name``."""
    query = select(Cluster.id).where(Cluster.name == name, Cluster.deleted_at.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


async def replace_kubeconfig(
    session: AsyncSession,
    cluster_id: uuid.UUID,
    *,
    api_server_url: str,
    kubeconfig_ciphertext: bytes,
    kubeconfig_key_id: str,
    kubeconfig_format: int,
) -> None:
    """Store new credentials and make the cluster due for a check now. The caller commits."""
    await session.execute(
        update(Cluster)
        .where(Cluster.id == cluster_id)
        .values(api_server_url=api_server_url, updated_at=func.now())
    )
    await store_credentials(
        session,
        cluster_id,
        kubeconfig_ciphertext=kubeconfig_ciphertext,
        kubeconfig_key_id=kubeconfig_key_id,
        kubeconfig_format=kubeconfig_format,
    )
    await check_soon(session, cluster_id)


async def store_credentials(
    session: AsyncSession,
    cluster_id: uuid.UUID,
    *,
    kubeconfig_ciphertext: bytes,
    kubeconfig_key_id: str,
    kubeconfig_format: int,
) -> None:
    """Set the cluster's encrypted kubeconfig (there is one row per cluster, or none once it is
    removed). The caller commits."""
    values = {
        "kubeconfig_ciphertext": kubeconfig_ciphertext,
        "kubeconfig_key_id": kubeconfig_key_id,
        "kubeconfig_format": kubeconfig_format,
    }
    statement = pg_insert(ClusterCredential).values(cluster_id=cluster_id, **values)
    await session.execute(
        statement.on_conflict_do_update(index_elements=[ClusterCredential.cluster_id], set_=values)
    )


async def erase_credentials(session: AsyncSession, cluster_id: uuid.UUID) -> None:
    """Delete the cluster's encrypted kubeconfig (a removal erases it). The caller commits."""
    await session.execute(
        delete(ClusterCredential).where(ClusterCredential.cluster_id == cluster_id)
    )


async def lock_live_cluster(session: AsyncSession, cluster_id: uuid.UUID) -> Cluster | None:
    """The live cluster, locked for this transaction (changes to it are serialised)."""
    query = (
        select(Cluster)
        .where(Cluster.id == cluster_id, Cluster.deleted_at.is_(None))
        .with_for_update()
    )
    return (await session.scalars(query)).first()


async def lock_live_clusters(
    session: AsyncSession, cluster_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Cluster]:
    """The live clusters among ``cluster_ids``, locked in id order (no deadlock between two
    bulk changes)."""
    query = (
        select(Cluster)
        .where(Cluster.id.in_(cluster_ids), Cluster.deleted_at.is_(None))
        .order_by(Cluster.id)
        .with_for_update()
    )
    return {cluster.id: cluster for cluster in (await session.scalars(query)).all()}


async def check_soon(session: AsyncSession, cluster_id: uuid.UUID) -> None:
    """Make the cluster due now (new credentials are tried within seconds)."""
    await session.execute(
        update(ClusterState)
        .where(ClusterState.cluster_id == cluster_id)
        .values(next_check_at=func.now())
    )


def matching_ids(where: ClusterFilter) -> Select[uuid.UUID]:
    """The ids of live clusters matching ``where`` (its values bound in), as a subquery for
    bulk statements."""
    query = (
        select(_C.id)
        .join(_states, _S.cluster_id == _C.id)
        .where(_C.deleted_at.is_(None), *shape_conditions(FilterShape.of(where)))
    )
    return query.params(filter_params(where))
