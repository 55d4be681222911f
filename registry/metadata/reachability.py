"""Which manifests of a repository its tags still reach (for `gc.untagged_manifests`).

A manifest is kept when a tag points at it, when a kept index lists it, when it is the
subject of a kept referrer, or when it is a referrer of a kept manifest (signatures and
SBOMs of a tagged image stay with it). Everything else in the repository is unreachable:
an untagged manifest that no kept index lists and no kept referrer points at.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from sqlalchemy import select

from registry.metadata.db import SQLConnection
from registry.metadata.tables import manifest_references, manifests, tags


def kept(
    tagged: Iterable[str],
    children: Mapping[str, Iterable[str]],
    subject_of: Mapping[str, str | None],
) -> set[str]:
    """The manifests reached from `tagged` (pure: no I/O). `children` maps an index to the
    manifests it lists; `subject_of` maps every manifest of the repository to its subject."""
    referrers: dict[str, list[str]] = {}
    for digest, subject in subject_of.items():
        if subject is not None:
            referrers.setdefault(subject, []).append(digest)
    reached: set[str] = set()
    pending = [d for d in tagged if d in subject_of]
    while pending:
        digest = pending.pop()
        if digest in reached:
            continue
        reached.add(digest)
        following = [*children.get(digest, ()), *referrers.get(digest, ())]
        subject = subject_of.get(digest)
        if subject is not None:
            following.append(subject)
        pending.extend(d for d in following if d in subject_of and d not in reached)
    return reached


async def unreachable(
    conn: SQLConnection, repository_id: int, without_tags: Collection[str] = ()
) -> set[str]:
    """Digests of the repository's manifests that no tag reaches, as the database is now (or
    as it would be without the tags `without_tags`: a retention dry run)."""
    rows = await conn.execute(
        select(manifests.c.digest, manifests.c.subject_digest).where(
            manifests.c.repository_id == repository_id
        )
    )
    subject_of: dict[str, str | None] = {row[0]: row[1] for row in rows}
    tagged_query = select(tags.c.manifest_digest).where(tags.c.repository_id == repository_id)
    if without_tags:
        tagged_query = tagged_query.where(tags.c.name.not_in(sorted(without_tags)))
    tagged = (await conn.execute(tagged_query.distinct())).scalars()
    edges = await conn.execute(
        select(manifests.c.digest, manifest_references.c.digest)
        .select_from(
            manifest_references.join(manifests, manifests.c.id == manifest_references.c.manifest_id)
        )
        .where(manifests.c.repository_id == repository_id, manifest_references.c.kind == "manifest")
    )
    children: dict[str, list[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    return set(subject_of) - kept(list(tagged), children, subject_of)
