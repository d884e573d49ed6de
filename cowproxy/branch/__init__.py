"""Branches: the catalog in the upstream database, the branch lifecycle and its CLI.

`names` decides every name; `catalog` creates, lists, resets and deletes branches;
`cli` is `cowproxy branch ...`. The per-table overlays live in `overlay`.
"""

from cowproxy.branch.names import BranchError

__all__ = ["BranchError"]
