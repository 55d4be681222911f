"""Names and references in a SQL database: repositories, tags, manifests, links, uploads."""
