"""The metadata schema, in SQLAlchemy Core. Migrations in `migrations/` create exactly this.

The database owns every name: repositories, tags and which blobs and manifests each repository
may see. Storage holds only immutable bytes keyed by digest.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Digest strings are at most "sha512:" + 128 hex digits.
DIGEST = String(160)


def name_column_type(length: int) -> String:
    """A name column that sorts bytewise ("ASCIIbetical", as the spec wants) on every database."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")  # type: ignore[return-value]


repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", name_column_type(255), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

blobs = Table(
    "blobs",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Garbage collection (registry/gc/): a random id per life of the row, so that an upload
    # can tell the row it reserved from one made again after a collection; and when set, the
    # moment a collector began deleting the bytes (the row is then invisible to pushes).
    Column("incarnation", String(32), nullable=False),
    Column("deleting_since", DateTime(timezone=True), nullable=True),
    # The storage key of its bytes when they are not at the digest's key (storage/layout.py):
    # on S3 a chunked upload's bytes stay where they were written. NULL: the digest's key.
    Column("location", String(200), nullable=True),
    Index("ix_blobs_deleting_since", "deleting_since"),
)

# Which blobs a repository may serve: pushed or mounted into it (Distribution's "layer links").
repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", DIGEST, ForeignKey("blobs.digest"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # By digest: a collection unlinks a blob everywhere, and deleting a blob row checks the
    # foreign key here (without it, a scan of every link per row deleted).
    Index("ix_repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "repository_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False
    ),
    Column("digest", DIGEST, nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("artifact_type", String(255), nullable=True),
    Column("subject_digest", DIGEST, nullable=True),
    Column("annotations", Text, nullable=True),  # JSON object, copied into referrers listings
    Column("size", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),  # the exact bytes as pushed
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("repository_id", "digest", name="uq_manifests_repository_digest"),
    Index("ix_manifests_subject", "repository_id", "subject_digest"),
)

# What a manifest refers to: its config and layers (blobs) or its child manifests.
manifest_references = Table(
    "manifest_references",
    metadata,
    Column(
        "manifest_id", Integer, ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("position", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # "config", "layer" or "manifest"
    Column("digest", DIGEST, nullable=False),
    Index("ix_manifest_references_digest", "digest"),
)

tags = Table(
    "tags",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", name_column_type(128), primary_key=True),
    Column("manifest_digest", DIGEST, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Pull statistics (registry/policies/pulls.py): flushed in batches, never per pull.
    Column("last_pulled_at", DateTime(timezone=True), nullable=True),
    Column("pull_count", BigInteger, nullable=False, server_default="0"),
    Index("ix_tags_manifest", "repository_id", "manifest_digest"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "repository_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False
    ),
    Column("size", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The one request (of any process) writing to the upload now, and until when it may.
    Column("writer", String(32), nullable=True),
    Column("writer_until", DateTime(timezone=True), nullable=True),
    # What the next request (on any replica) needs to go on without reading the bytes back:
    # the hash state at the upload's end, and the storage driver's own state (S3: the
    # multipart upload's id and parts). Saved with `size`, in the same statement.
    Column("hash_state", LargeBinary, nullable=True),
    Column("storage_state", Text, nullable=True),
)


# Identity and access control (registry/auth/; the SQL is in registry/metadata/identity.py) --

# Account ids are never reused (AUTOINCREMENT on SQLite, a sequence on PostgreSQL): tokens
# name their account by id, so a removed account's tokens cannot come back with a new one.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),  # argon2id, or bcrypt from htpasswd
    Column("admin", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("password_changed_at", DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)

teams = Table(
    "teams",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

team_members = Table(
    "team_members",
    metadata,
    Column("team_id", Integer, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_team_members_user", "user_id"),
)

# Actions ("pull,push,delete") on a repository-name pattern, for one user or one team.
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("team_id", Integer, ForeignKey("teams.id", ondelete="CASCADE"), nullable=True),
    Column("pattern", String(255), nullable=False),
    Column("actions", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_grants_user", "user_id"),
    Index("ix_grants_team", "team_id"),
)

# Patterns everyone may pull from, anonymous callers included.
public_repositories = Table(
    "public_repositories",
    metadata,
    Column("pattern", String(255), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# CI tokens: the secret is shown once; only its SHA-256 is kept. Named `robot$<owner>+<name>`
# or `robot$<name>` (registry/auth/permissions.py); robots made before that naming keep their
# old name as `legacy_name`, still accepted at login with their secret.
robot_tokens = Table(
    "robot_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(160), nullable=False, unique=True),
    Column("legacy_name", String(64), nullable=True),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("scopes", Text, nullable=False),  # JSON [[pattern, "pull,push"], ...]
    Column("admin", Boolean, nullable=False),  # may use the admin API
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    sqlite_autoincrement=True,
)

# Identity tokens (`docker login` keeps one instead of the password): hashed like robots'.
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("robot_id", Integer, ForeignKey("robot_tokens.id", ondelete="CASCADE"), nullable=True),
    Column("client_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # A user, a robot (`robot$...`), `external:<issuer>:<subject>`, or "" (anonymous).
    Column("actor", String(128), nullable=False),
    Column("address", String(64), nullable=False),
    Column("action", String(32), nullable=False),  # login, login_failed, push, delete, denied...
    Column("target", String(512), nullable=False),
    Column("detail", Text, nullable=True),  # JSON object
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_actor", "actor"),
)

# Failed logins per key in a fixed window, shared by every replica through the database:
# "account:user:<id>" (a user), "account:name:<name>" (a name no user has), "address:<ip>".
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_started_at", DateTime(timezone=True), nullable=False),
)

# Token-signing keys shared by every replica (`auth.keys_store: database`; registry/auth/
# key_stores.py). The private key is sealed with AES-256-GCM under `auth.keys_secret`; the
# newest signs, older ones verify until their successor has signed for a token's lifetime.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),  # the RFC 7638 thumbprint of its public key
    Column("algorithm", String(16), nullable=False),  # ES256 or RS256
    Column("created_ms", BigInteger, nullable=False),  # unix milliseconds; orders the keys
    Column("sealed_key", LargeBinary, nullable=False),  # 0x01, nonce, AES-GCM(PKCS#8 DER)
)


# Garbage collection (registry/gc/; the SQL is in registry/metadata/gcstore.py) -------------

# Blobs that may have lost their last reference (deleted manifests, unlinks) or never had one
# (new uploads, mounts), with the time of the latest such event: each is looked at once the
# grace period has passed since (`gc.blob_grace_seconds`, applied when collecting).
gc_blob_reviews = Table(
    "gc_blob_reviews",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("event_at", DateTime(timezone=True), nullable=False),
    Index("ix_gc_blob_reviews_event_at", "event_at"),
)

# Manifests that may have become untagged and unreferenced, likewise (`gc.untagged_manifests`).
gc_manifest_reviews = Table(
    "gc_manifest_reviews",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", DIGEST, primary_key=True),
    Column("event_at", DateTime(timezone=True), nullable=False),
    Index("ix_gc_manifest_reviews_event_at", "event_at"),
)

# One row per collection: what it found and what it reclaimed.
gc_runs = Table(
    "gc_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("trigger", String(16), nullable=False),  # schedule, cli or api
    Column("dry_run", Boolean, nullable=False),
    Column("status", String(16), nullable=False),  # running, ok or failed
    Column("host", String(255), nullable=False),  # the replica: host name and process id
    Column("blobs_deleted", BigInteger, nullable=False),
    Column("bytes_reclaimed", BigInteger, nullable=False),
    Column("manifests_deleted", BigInteger, nullable=False),
    Column("uploads_expired", BigInteger, nullable=False),
    Column("detail", Text, nullable=True),  # JSON object: error, per-phase figures
    Index("ix_gc_runs_started_at", "started_at"),
)


# Lifecycle policies (registry/policies/; the SQL is in registry/metadata/policystore.py) ------

# Retention per repository pattern (the longest matching pattern governs a repository).
# Durations in seconds; a NULL rule is not set. `keep_tags` is comma-separated tag globs.
retention_policies = Table(
    "retention_policies",
    metadata,
    Column("pattern", String(255), primary_key=True),
    Column("keep_last", Integer, nullable=True),
    Column("keep_tags", String(1024), nullable=True),
    Column("keep_pulled_within", BigInteger, nullable=True),
    Column("keep_pushed_within", BigInteger, nullable=True),
    Column("untagged_after", BigInteger, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Tags (comma-separated globs) that, once pushed, never move to another digest nor go.
immutable_tag_rules = Table(
    "immutable_tag_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pattern", String(255), nullable=False),
    Column("tags", String(1024), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("pattern", "tags", name="uq_immutable_tag_rules_pattern_tags"),
    sqlite_autoincrement=True,
)

# Storage quota per namespace (a repository name's first component), in bytes.
namespace_quotas = Table(
    "namespace_quotas",
    metadata,
    Column("namespace", name_column_type(255), primary_key=True),
    Column("limit_bytes", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# What each namespace stores, kept up to date by every manifest write and delete in the same
# transaction (registry/metadata/usage.py): each digest (blob or manifest) once, with how many
# manifest rows of the namespace hold it, and the namespace's total. A quota check reads one
# row instead of summing the namespace's references (200 ms at 10,000 manifests on SQLite).
namespace_blobs = Table(
    "namespace_blobs",
    metadata,
    Column("namespace", name_column_type(255), primary_key=True),
    Column("digest", DIGEST, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("refs", Integer, nullable=False),
)

namespace_usage = Table(
    "namespace_usage",
    metadata,
    Column("namespace", name_column_type(255), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
)
