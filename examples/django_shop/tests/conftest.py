"""Django set up for the shop's tests, without pytest-django: a test database for the
session, each test in a transaction rolled back after it, and the clients."""

import os
from collections.abc import Iterator

import django
import pytest

os.environ["DJANGO_SETTINGS_MODULE"] = "shop_site.settings"
# The app's own bridge stays off in tests, whatever the shell's CUSTOMERIO_* say: the
# fixtures (cio_events, cio_bridge) capture what the code under test sends.
os.environ["CUSTOMERIO_ENABLED"] = "0"
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402 - needs django.setup()
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment, teardown_test_environment  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _test_database() -> Iterator[None]:
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    yield
    connection.creation.destroy_test_db(old_name, verbosity=0)
    teardown_test_environment()


@pytest.fixture(autouse=True)
def _rolled_back() -> Iterator[None]:
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


@pytest.fixture
def user() -> object:
    return get_user_model().objects.create_user(pk=42, username="ada", password="lovelace")


@pytest.fixture
def client(user: object) -> Client:
    """A client logged in as ``user`` (id 42)."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def visitor() -> Client:
    """A client that is not logged in."""
    return Client()
