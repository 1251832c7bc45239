"""clusters(...) and cluster(id): filters, selectors, ordering and pages, read from PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.db.clusters import (
    ClusterFilter,
    ClusterRecord,
    Keyset,
    OrderField,
    Ordering,
    cluster_labels,
    get_cluster,
    get_clusters,
    list_clusters,
)
from fleetql.db.models import ClusterStatus
from fleetql.labels import parse_label_selector
from tests.conftest import GraphQLClient, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""

LIST = """
query($filter: ClusterFilter, $page: Int! = 1, $limit: Int! = 20, $orderBy: ClusterOrder) {
  clusters(filter: $filter, page: $page, limit: $limit, orderBy: $orderBy) {
    total page limit items { name status nodeCount }
  }
}
"""

FLEET: list[dict[str, Any]] = [
    {
        "name": "prod-sh",
        "description": "Shanghai production",
        "labels": {"env": "prod", "region": "sh", "team": "payments"},
        "status": "HEALTHY",
        "nodes": 50,
    },
    {
        "name": "prod-bj",
        "description": "Beijing 100% prod",
        "labels": {"env": "prod", "region": "bj", "tier": "db"},
        "status": "DEGRADED",
        "nodes": 12,
    },
    {
        "name": "staging",
        "description": "it's staging_area",
        "labels": {"env": "staging", "region": "sh"},
        "status": "UNREACHABLE",
        "nodes": None,
    },
    {
        "name": "dev-1",
        "description": "developer sandbox",
        "labels": {"env": "dev", "deprecated": "true"},
        "status": "UNKNOWN",
        "nodes": None,
    },
    {
        "name": "edge-7",
        "description": "Edge site (PROD traffic)",
        "labels": {"env": "prod", "region": "gz"},
        "status": "UNHEALTHY",
        "nodes": 3,
    },
]


@pytest.fixture
async def fleet(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> GraphQLClient:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for spec in FLEET:
            payload = await api.data(
                IMPORT,
                {
                    "input": {
                        "name": spec["name"],
                        "description": spec["description"],
                        "kubeconfig": kubeconfigs.base64(),
                        "labels": [{"key": k, "value": v} for k, v in spec["labels"].items()],
                    }
                },
            )
            assert payload["importCluster"]["userErrors"] == []
            await connection.execute(
                "UPDATE cluster_states SET status = $1, node_count = $2 "
                "WHERE cluster_id = (SELECT id FROM clusters WHERE name = $3)",
                spec["status"],
                spec["nodes"],
                spec["name"],
            )
    finally:
        await connection.close()
    return api


async def names(api: GraphQLClient, **variables: Any) -> list[str]:
    data = await api.data(LIST, variables)
    return [item["name"] for item in data["clusters"]["items"]]


async def test_default_list_is_first_page_of_twenty_sorted_by_name(fleet: GraphQLClient) -> None:
    data = await fleet.data(LIST)
    page = data["clusters"]
    assert (page["total"], page["page"], page["limit"]) == (5, 1, 20)
    assert [item["name"] for item in page["items"]] == sorted(spec["name"] for spec in FLEET)


async def test_status_filter_takes_one_or_more(fleet: GraphQLClient) -> None:
    assert await names(fleet, filter={"status": ["HEALTHY"]}) == ["prod-sh"]
    assert await names(fleet, filter={"status": ["UNREACHABLE", "UNKNOWN"]}) == ["dev-1", "staging"]


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("PROD", ["edge-7", "prod-bj", "prod-sh"]),
        ("sandbox", ["dev-1"]),
        ("100%", ["prod-bj"]),
        ("%", ["prod-bj"]),
        ("_", ["staging"]),
        ("staging_", ["staging"]),
        ("it's", ["staging"]),
        ('"', []),
        ("\\", []),
        ("no such thing", []),
    ],
)
async def test_search_is_case_insensitive_substring_with_literal_wildcards(
    fleet: GraphQLClient, search: str, expected: list[str]
) -> None:
    assert await names(fleet, filter={"search": search}) == expected


async def test_labels_filter_requires_all(fleet: GraphQLClient) -> None:
    assert await names(fleet, filter={"labels": [{"key": "env", "value": "prod"}]}) == [
        "edge-7",
        "prod-bj",
        "prod-sh",
    ]
    assert await names(
        fleet,
        filter={"labels": [{"key": "env", "value": "prod"}, {"key": "region", "value": "sh"}]},
    ) == ["prod-sh"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("env=prod", ["edge-7", "prod-bj", "prod-sh"]),
        ("env==prod", ["edge-7", "prod-bj", "prod-sh"]),
        ("env!=prod", ["dev-1", "staging"]),
        ("tier!=db", ["dev-1", "edge-7", "prod-sh", "staging"]),
        ("region in (sh,bj)", ["prod-bj", "prod-sh", "staging"]),
        ("region notin (sh,bj)", ["dev-1", "edge-7"]),
        ("!deprecated", ["edge-7", "prod-bj", "prod-sh", "staging"]),
        ("team", ["prod-sh"]),
        ("env=prod,tier!=db,region in (sh,bj),!deprecated,team", ["prod-sh"]),
        ("", ["dev-1", "edge-7", "prod-bj", "prod-sh", "staging"]),
    ],
)
async def test_label_selector_forms(
    fleet: GraphQLClient, selector: str, expected: list[str]
) -> None:
    assert await names(fleet, filter={"labelSelector": selector}) == expected


@pytest.mark.parametrize("selector", ["env=prod,", "region in (sh", "env~prod", "in in", "a b c"])
async def test_malformed_selector_is_a_clear_error(fleet: GraphQLClient, selector: str) -> None:
    body = await fleet.post(LIST, {"filter": {"labelSelector": selector}})
    assert body["data"] is None
    [error] = body["errors"]
    assert error["message"].startswith("filter.labelSelector: ")
    assert "label selector" in error["message"]


async def test_one_label_key_with_two_values_is_a_clear_error(fleet: GraphQLClient) -> None:
    twice = [{"key": "env", "value": "prod"}, {"key": "env", "value": "dev"}]
    body = await fleet.post(LIST, {"filter": {"labels": twice}})
    assert body["data"] is None
    [error] = body["errors"]
    assert error["message"] == "filter.labels[1]: label 'env' is given twice"
    same = [{"key": "env", "value": "prod"}, {"key": "env", "value": "prod"}]
    assert await names(fleet, filter={"labels": same}) == ["edge-7", "prod-bj", "prod-sh"]


async def test_filters_combine(fleet: GraphQLClient) -> None:
    assert await names(
        fleet,
        filter={
            "status": ["HEALTHY", "DEGRADED"],
            "labelSelector": "region=bj",
            "search": "beijing",
        },
    ) == ["prod-bj"]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (
            {"field": "NAME", "direction": "DESC"},
            ["staging", "prod-sh", "prod-bj", "edge-7", "dev-1"],
        ),
        ({"field": "STATUS"}, ["staging", "edge-7", "prod-bj", "dev-1", "prod-sh"]),
        (
            {"field": "STATUS", "direction": "DESC"},
            ["prod-sh", "dev-1", "prod-bj", "edge-7", "staging"],
        ),
        ({"field": "NODE_COUNT"}, ["edge-7", "prod-bj", "prod-sh"]),
        ({"field": "NODE_COUNT", "direction": "DESC"}, ["prod-sh", "prod-bj", "edge-7"]),
        ({"field": "CREATED_AT"}, [spec["name"] for spec in FLEET]),
        ({"field": "CREATED_AT", "direction": "DESC"}, [spec["name"] for spec in reversed(FLEET)]),
    ],
)
async def test_ordering(fleet: GraphQLClient, order: dict[str, str], expected: list[str]) -> None:
    got = await names(fleet, orderBy=order)
    assert got[: len(expected)] == expected
    assert sorted(got) == sorted(spec["name"] for spec in FLEET)


async def test_ties_are_broken_stably_so_pages_never_overlap(fleet: GraphQLClient) -> None:
    # Three clusters have no node count: paging one at a time must still visit each once.
    seen = []
    for page in range(1, 6):
        seen += await names(fleet, orderBy={"field": "NODE_COUNT"}, page=page, limit=1)
    assert sorted(seen) == sorted(spec["name"] for spec in FLEET)


async def test_pagination_edges(fleet: GraphQLClient) -> None:
    page2 = (await fleet.data(LIST, {"page": 2, "limit": 2}))["clusters"]
    assert (page2["total"], page2["page"], page2["limit"]) == (5, 2, 2)
    assert [item["name"] for item in page2["items"]] == ["prod-bj", "prod-sh"]
    last = (await fleet.data(LIST, {"page": 3, "limit": 2}))["clusters"]
    assert [item["name"] for item in last["items"]] == ["staging"]
    past = (await fleet.data(LIST, {"page": 9, "limit": 2}))["clusters"]
    assert past["items"] == [] and past["total"] == 5
    counted = (await fleet.data(LIST, {"limit": 0}))["clusters"]
    assert counted["items"] == [] and counted["total"] == 5
    assert len((await fleet.data(LIST, {"limit": 500}))["clusters"]["items"]) == 5


async def test_total_is_counted_when_asked_for_even_through_fragments(
    fleet: GraphQLClient,
) -> None:
    items_only = await fleet.data("{ clusters(page: 2, limit: 2) { items { name } } }")
    assert [i["name"] for i in items_only["clusters"]["items"]] == ["prod-bj", "prod-sh"]
    fragment = await fleet.data(
        "query { clusters(limit: 1) { ...Counted } } fragment Counted on ClusterPage { total }"
    )
    inline = await fleet.data("{ clusters(limit: 1) { ... on ClusterPage { total } } }")
    assert fragment["clusters"]["total"] == inline["clusters"]["total"] == 5
    degraded = await fleet.data(
        "{ clusters(filter: {status: [HEALTHY, DEGRADED]}, page: 2, limit: 1)"
        " { total items { name } } }"
    )
    assert degraded["clusters"]["items"] and degraded["clusters"]["total"] >= 2


@pytest.mark.parametrize(
    ("variables", "argument"),
    [({"limit": 501}, "limit"), ({"limit": -1}, "limit"), ({"page": 0}, "page")],
)
async def test_out_of_range_paging_is_refused_naming_the_argument(
    fleet: GraphQLClient, variables: dict[str, int], argument: str
) -> None:
    body = await fleet.post(LIST, variables)
    [error] = body["errors"]
    assert error["message"].startswith(f"{argument}: ")


async def test_cluster_by_id_and_unknown_or_malformed_ids(fleet: GraphQLClient) -> None:
    listed = await fleet.data("{ clusters(limit: 1) { items { id name } } }")
    first = listed["clusters"]["items"][0]
    query = "query($id: ID!) { cluster(id: $id) { id name status labels { key value } } }"
    assert (await fleet.data(query, {"id": first["id"]}))["cluster"]["name"] == first["name"]
    unknown = await fleet.data(query, {"id": "00000000-0000-4000-8000-000000000000"})
    assert unknown["cluster"] is None
    malformed = await fleet.post(query, {"id": "not-a-uuid"})
    assert malformed["errors"][0]["message"].startswith("id: ")


SEARCHED = """
query($filter: ClusterFilter, $page: Int!, $limit: Int!, $orderBy: ClusterOrder) {
  clusters(filter: $filter, page: $page, limit: $limit, orderBy: $orderBy) {
    total items { name description status }
  }
}
"""
STATUSES = ("HEALTHY", "DEGRADED", "UNHEALTHY", "UNREACHABLE", "UNKNOWN")


@pytest.fixture
async def wide_fleet(api: GraphQLClient, database_url: str) -> GraphQLClient:
    """48 live clusters (ties in status and node count, some matching "eu" by name, some by
    description, some both) and removed ones that would match every filter, written in SQL."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for number in range(52):
            region = ("eu-west", "us-east", "ap-south", "EU-central")[number % 4]
            where = "Europe" if number % 3 == 0 else "elsewhere"
            cluster_id = await connection.fetchval(
                "INSERT INTO clusters (name, description, api_server_url, deleted_at) "
                "VALUES ($1, $2, 'https://k8s.example:6443', "
                "CASE WHEN $3 THEN now() END) RETURNING id",
                f"{region.lower()}-{number:02d}",
                f"serves {where} (eu) " if number % 5 == 0 else f"serves {where}",
                number >= 48,
            )
            await connection.execute(
                "INSERT INTO cluster_states (cluster_id, status, node_count) VALUES ($1, $2, $3)",
                cluster_id,
                "UNREACHABLE" if number >= 48 else STATUSES[number % 5],
                None if number % 7 == 0 else number % 4,
            )
    finally:
        await connection.close()
    return api


async def searched_pages(
    api: GraphQLClient, filter: dict[str, Any], order: dict[str, str], limit: int
) -> tuple[list[int], list[str]]:
    """Every page's total and the names of all pages, in order."""
    totals, seen, page = [], [], 1
    while True:
        data = await api.data(
            SEARCHED, {"filter": filter, "page": page, "limit": limit, "orderBy": order}
        )
        totals.append(data["clusters"]["total"])
        items = data["clusters"]["items"]
        if not items:
            return totals, seen
        seen += [item["name"] for item in items]
        page += 1


@pytest.mark.parametrize("field", ["NAME", "CREATED_AT", "STATUS", "NODE_COUNT"])
@pytest.mark.parametrize("direction", ["ASC", "DESC"])
@pytest.mark.parametrize("statuses", [None, ["UNREACHABLE", "HEALTHY"]])
async def test_search_pages_are_the_unsearched_order_filtered(
    wide_fleet: GraphQLClient, field: str, direction: str, statuses: list[str] | None
) -> None:
    """A search matches first and orders after (fleetql/db/clusters.py, _list_searched): its
    pages must be exactly the unsearched list's order with non-matching clusters left out."""
    order = {"field": field, "direction": direction}
    base = {"status": statuses} if statuses else {}
    everything = await wide_fleet.data(
        SEARCHED, {"filter": base, "page": 1, "limit": 500, "orderBy": order}
    )
    expected = [
        item["name"]
        for item in everything["clusters"]["items"]
        if "eu" in item["name"].lower() or "eu" in item["description"].lower()
    ]
    assert 10 < len(expected) < everything["clusters"]["total"]
    totals, seen = await searched_pages(wide_fleet, {**base, "search": "eU"}, order, limit=7)
    assert seen == expected
    assert set(totals) == {len(expected)}  # past the last page too
    counted = await wide_fleet.data(
        SEARCHED,
        {"filter": {**base, "search": "eU"}, "page": 1, "limit": 0, "orderBy": order},
    )
    assert counted["clusters"] == {"total": len(expected), "items": []}


async def test_status_total_leaves_out_removed_clusters(wide_fleet: GraphQLClient) -> None:
    """The status-only total is counted on the states less the removed clusters' ones."""
    for statuses in (["UNREACHABLE"], ["UNREACHABLE", "UNKNOWN"], ["HEALTHY"]):
        data = await wide_fleet.data(
            SEARCHED, {"filter": {"status": statuses}, "page": 1, "limit": 500}
        )
        items = data["clusters"]["items"]
        assert {item["status"] for item in items} == set(statuses)
        assert (
            data["clusters"]["total"]
            == len(items)
            == 48 // 5 * len(statuses)
            + sum(1 for number in range(48 - 48 % 5, 48) if STATUSES[number % 5] in statuses)
        )


KEYSET = """
query($filter: ClusterFilter, $limit: Int!, $orderBy: ClusterOrder, $after: ID, $page: Int! = 1) {
  clusters(filter: $filter, limit: $limit, orderBy: $orderBy, after: $after, page: $page) {
    items { name } pageInfo { endCursor hasNextPage }
  }
}
"""


@pytest.mark.parametrize("field", ["NAME", "CREATED_AT", "STATUS", "NODE_COUNT"])
@pytest.mark.parametrize("direction", ["ASC", "DESC"])
@pytest.mark.parametrize(
    "filter", [{}, {"search": "eu"}, {"status": ["UNREACHABLE", "HEALTHY", "DEGRADED"]}]
)
async def test_after_cursor_walks_the_same_order_as_pages(
    wide_fleet: GraphQLClient, field: str, direction: str, filter: dict[str, Any]
) -> None:
    """Following pageInfo.endCursor visits every cluster once, in the order of one big page,
    through ties and clusters without a node count (which sort last either way)."""
    order = {"field": field, "direction": direction}
    everything = await wide_fleet.data(
        SEARCHED, {"filter": filter, "page": 1, "limit": 500, "orderBy": order}
    )
    expected = [item["name"] for item in everything["clusters"]["items"]]
    seen: list[str] = []
    after = None
    while True:
        variables = {"filter": filter, "limit": 4, "orderBy": order, "after": after}
        page = (await wide_fleet.data(KEYSET, variables))["clusters"]
        seen += [item["name"] for item in page["items"]]
        info = page["pageInfo"]
        assert info["hasNextPage"] == (len(seen) < len(expected))
        if not info["hasNextPage"]:
            break
        after = info["endCursor"]
    assert seen == expected


async def test_after_cursor_is_checked_naming_the_argument(wide_fleet: GraphQLClient) -> None:
    first = (await wide_fleet.data(KEYSET, {"limit": 2}))["clusters"]["pageInfo"]
    assert first["hasNextPage"] and first["endCursor"]
    cases = [
        ({"after": "not a cursor"}, "after"),
        ({"after": "eyJvIjogMX0="}, "after"),  # base64 JSON without the fields
        ({"after": first["endCursor"], "orderBy": {"field": "STATUS"}}, "after"),
        ({"after": first["endCursor"], "orderBy": {"field": "NAME", "direction": "DESC"}}, "after"),
        ({"after": first["endCursor"], "page": 2}, "page"),
    ]
    for variables, argument in cases:
        body = await wide_fleet.post(KEYSET, {"limit": 2, **variables})
        [error] = body["errors"]
        assert error["message"].startswith(f"{argument}: "), error


async def test_last_page_has_no_next_page_and_empty_page_no_cursor(
    wide_fleet: GraphQLClient,
) -> None:
    everything = (await wide_fleet.data(KEYSET, {"limit": 500}))["clusters"]
    assert everything["pageInfo"]["hasNextPage"] is False
    assert len(everything["items"]) == 48
    after_last = await wide_fleet.data(
        KEYSET, {"limit": 5, "after": everything["pageInfo"]["endCursor"]}
    )
    assert after_last["clusters"] == {
        "items": [],
        "pageInfo": {"endCursor": None, "hasNextPage": False},
    }


async def test_statements_built_once_bind_each_calls_own_values(
    fleet: GraphQLClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """db/clusters.py keeps one statement per shape of filter: the same shape with other
    values (and other scopes) must never answer with an earlier call's values."""
    by_name = Ordering(OrderField.NAME)

    async def listed(reader: AsyncSession, where: ClusterFilter, **options: Any) -> list[str]:
        given: dict[str, Any] = {"ordering": by_name, "offset": 0, "limit": 20} | options
        _, records = await list_clusters(reader, where, **given)
        return [record.name for record in records]

    prod, sh = {"env": "prod"}, {"region": "sh"}
    prods = ["edge-7", "prod-bj", "prod-sh"]
    async with sessions() as session:
        assert await listed(session, ClusterFilter(labels=prod)) == prods
        assert await listed(session, ClusterFilter(labels=sh)) == ["prod-sh", "staging"]
        assert await listed(session, ClusterFilter(search="prod")) == prods
        assert await listed(session, ClusterFilter(search="stag")) == ["staging"]
        healthy = ClusterFilter(statuses=[ClusterStatus.HEALTHY])
        unknown = ClusterFilter(statuses=[ClusterStatus.UNKNOWN])
        assert await listed(session, healthy) == ["prod-sh"]
        assert await listed(session, unknown) == ["dev-1"]
        assert await listed(session, ClusterFilter(), limit=1) == ["dev-1"]
        assert await listed(session, ClusterFilter(), offset=1, limit=2) == ["edge-7", "prod-bj"]
        everyone = {name: record for name, record in await _records(session)}
        after_bj = Keyset(key="prod-bj", id=everyone["prod-bj"].id)
        after_sh = Keyset(key="prod-sh", id=everyone["prod-sh"].id)
        assert await listed(session, ClusterFilter(), after=after_bj) == ["prod-sh", "staging"]
        assert await listed(session, ClusterFilter(), after=after_sh) == ["staging"]

        in_sh = (parse_label_selector("region=sh"),)
        in_bj = (parse_label_selector("region=bj"),)
        sh_id, bj_id = everyone["prod-sh"].id, everyone["prod-bj"].id
        assert (await get_cluster(session, sh_id, scope=in_sh)) == everyone["prod-sh"]
        assert await get_cluster(session, sh_id, scope=in_bj) is None
        assert (await get_cluster(session, bj_id, scope=in_bj)) == everyone["prod-bj"]
        assert set(await get_clusters(session, [sh_id])) == {sh_id}
        assert set(await get_clusters(session, [sh_id, bj_id])) == {sh_id, bj_id}
        assert await cluster_labels(session, [bj_id]) == {bj_id: FLEET[1]["labels"]}


async def _records(session: AsyncSession) -> list[tuple[str, ClusterRecord]]:
    _, records = await list_clusters(
        session, ClusterFilter(), ordering=Ordering(OrderField.NAME), offset=0, limit=20
    )
    return [(record.name, record) for record in records]
