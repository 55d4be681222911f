"""`/v2/<name>/tags/list` and `/v2/_catalog`: byte order, `n`/`last` and the Link header."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from api.helpers import assert_error, push_blob, push_image, push_manifest, unique_repo

# Byte ("ASCIIbetical") order: digits, then upper case, then `_`, then lower case.
TAGS = ["v1.0", "V2", "latest", "9", "_x", "a-b", "a.b", "a_b", "Z", "v1.0.1", "1.10", "1.9"]
LINK = re.compile(r'^<(?P<url>/v2/[^>]+)>; rel="next"$')


@pytest.fixture(scope="module")
def tagged(registry_url: str) -> str:
    """A repository with every tag in TAGS, all on one manifest."""
    repo = unique_repo("listings")
    with httpx.Client(base_url=registry_url) as c:
        pushed = push_image(c, repo, TAGS[0])
        for tag in TAGS[1:]:
            push_manifest(c, repo, tag, pushed.body, pushed.media_type)
    return repo


def walk(client: httpx.Client, url: str, key: str) -> tuple[list[str], list[int]]:
    """Follow Link headers from `url`; every item seen, and the size of each page."""
    items: list[str] = []
    sizes: list[int] = []
    next_url: str | None = url
    while next_url is not None:
        response = client.get(next_url)
        assert response.status_code == 200, response.text
        page = response.json()[key]
        items += page
        sizes.append(len(page))
        link = response.headers.get("link")
        next_url = None
        if link is not None:
            match = LINK.match(link)
            assert match, link
            next_url = match["url"]
        assert len(sizes) < 1000
    return items, sizes


def test_tags_in_byte_order(client: httpx.Client, tagged: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "link" not in response.headers
    assert response.json() == {"name": tagged, "tags": sorted(TAGS)}
    assert sorted(TAGS)[:3] == ["1.10", "1.9", "9"]


@pytest.mark.parametrize("n", [1, 2, 5, len(TAGS) - 1])
def test_tags_pagination(client: httpx.Client, tagged: str, n: int) -> None:
    items, sizes = walk(client, f"/v2/{tagged}/tags/list?n={n}", "tags")
    assert items == sorted(TAGS)
    assert all(size == n for size in sizes[:-1])
    assert 0 < sizes[-1] <= n


def test_tags_link_header(client: httpx.Client, tagged: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list", params={"n": 3})
    assert response.json()["tags"] == sorted(TAGS)[:3]
    match = LINK.match(response.headers["link"])
    assert match
    url = urlsplit(match["url"])
    assert url.path == f"/v2/{tagged}/tags/list"
    assert parse_qs(url.query) == {"n": ["3"], "last": [sorted(TAGS)[2]]}


def test_tags_n_equal_to_count_has_no_link(client: httpx.Client, tagged: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list", params={"n": len(TAGS)})
    assert response.json()["tags"] == sorted(TAGS)
    assert "link" not in response.headers
    response = client.get(f"/v2/{tagged}/tags/list", params={"n": 1000})
    assert response.json()["tags"] == sorted(TAGS)
    assert "link" not in response.headers


def test_tags_n_zero(client: httpx.Client, tagged: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list", params={"n": 0})
    assert response.status_code == 200
    assert response.json() == {"name": tagged, "tags": []}
    assert "link" not in response.headers


def test_tags_last(client: httpx.Client, tagged: str) -> None:
    ordered = sorted(TAGS)
    response = client.get(f"/v2/{tagged}/tags/list", params={"last": ordered[4]})
    assert response.json()["tags"] == ordered[5:]
    response = client.get(f"/v2/{tagged}/tags/list", params={"last": ordered[4], "n": 2})
    assert response.json()["tags"] == ordered[5:7]
    # `last` need not be an existing tag: the list starts after where it would sort.
    response = client.get(f"/v2/{tagged}/tags/list", params={"last": "a"})
    assert response.json()["tags"] == [t for t in ordered if t > "a"]
    response = client.get(f"/v2/{tagged}/tags/list", params={"last": ordered[-1]})
    assert response.json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "", " 2"])
def test_invalid_n(client: httpx.Client, tagged: str, n: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list?n={n}")
    assert_error(response, 400, "PAGINATION_NUMBER_INVALID")
    assert_error(client.get(f"/v2/_catalog?n={n}"), 400, "PAGINATION_NUMBER_INVALID")


def test_tags_of_unknown_repository(client: httpx.Client) -> None:
    name = unique_repo()
    errors = assert_error(client.get(f"/v2/{name}/tags/list"), 404, "NAME_UNKNOWN")
    assert errors[0]["detail"] == {"name": name}
    assert_error(client.get(f"/v2/{name}/tags/list?n=0"), 404, "NAME_UNKNOWN")


def test_repository_without_tags(client: httpx.Client) -> None:
    repo = unique_repo("listings")
    push_image(client, repo, None)
    assert client.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": []}


def test_catalog_lists_every_repository_once_in_byte_order(client: httpx.Client) -> None:
    prefix = unique_repo("catalog")
    names = [f"{prefix}/{s}" for s in ("b", "a", "a-b", "a/c", "a.b", "0")]
    for name in names:
        push_blob(client, name, name.encode())
    response = client.get("/v2/_catalog")
    assert response.status_code == 200
    everything = response.json()["repositories"]
    assert everything == sorted(everything)
    assert len(everything) == len(set(everything))
    assert [n for n in everything if n.startswith(prefix + "/")] == sorted(names)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_catalog_pagination(client: httpx.Client, n: int) -> None:
    for _ in range(3):
        push_blob(client, unique_repo("catalog"), b"x")
    whole = client.get("/v2/_catalog").json()["repositories"]
    items, sizes = walk(client, f"/v2/_catalog?n={n}", "repositories")
    # Other tests may add repositories meanwhile; ours were all there before the walk began.
    assert items == sorted(items)
    assert set(whole) <= set(items)
    assert all(size == n for size in sizes[:-1])


def test_catalog_n_zero_and_last(client: httpx.Client) -> None:
    response = client.get("/v2/_catalog", params={"n": 0})
    assert response.status_code == 200
    assert response.json() == {"repositories": []}
    assert "link" not in response.headers
    whole = client.get("/v2/_catalog").json()["repositories"]
    response = client.get("/v2/_catalog", params={"last": whole[0], "n": 2})
    assert response.json()["repositories"][0] > whole[0]


def test_catalog_skips_repositories_without_content(client: httpx.Client) -> None:
    """Starting an upload creates the repository row, but it is not listed until used."""
    name = unique_repo("catalog")
    assert client.post(f"/v2/{name}/blobs/uploads/").status_code == 202
    assert name not in client.get("/v2/_catalog").json()["repositories"]
