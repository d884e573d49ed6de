"""Fixtures for the fault tests (helpers live in `faultsupport`)."""

from __future__ import annotations

import pytest

from faultsupport import bystander_on


@pytest.fixture
def bystander(proxy):
    """An open session through the shared (plain relay) proxy that the test's fault
    must not disturb."""
    with bystander_on(proxy) as b:
        yield b


@pytest.fixture(params=["passthrough", "branches"])
def any_proxy(request):
    """The shared proxy in each mode: the plain relay, and the product (branch routing,
    read-only production), whose sessions run setup SQL and gate statements."""
    return request.getfixturevalue("proxy" if request.param == "passthrough" else "branch_proxy")


@pytest.fixture
def any_bystander(any_proxy):
    """`bystander`, on whichever proxy `any_proxy` is."""
    with bystander_on(any_proxy) as b:
        yield b
