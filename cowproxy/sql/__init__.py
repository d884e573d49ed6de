"""SQL understanding for branches: analyze statements (pglast), rewrite names, cache."""
