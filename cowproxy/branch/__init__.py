"""Branches: the catalog in the upstream database, the branch lifecycle and its CLI.

`names` decides every name; `catalog` creates, lists, resets and deletes branches;
`upgrade` brings branches made by an older cowproxy up to date, keeping their rows;
`cli` is `cowproxy branch ...`. The per-table overlays live in `overlay`.
"""

from cowproxy.branch.names import BranchError

__all__ = ["BranchError"]
