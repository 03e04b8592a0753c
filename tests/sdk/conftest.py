"""A real `tallybook serve` wired to the fake Stripe, for driving OpenMeter's official SDKs.

The server is a subprocess (the same command an operator runs), on SQLite and on PostgreSQL; its
`stripe:` section points at the fake Stripe, so checkout sessions and customer links are real calls.
One server per backend and test module (starting one takes seconds): the tests of a module share it,
so each works on its own meters, customers and subjects.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fakestripe import FakeStripeServer
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tests.conftest import _postgres_database, empty_all_tables
from tests.serverproc import ADMIN_KEY, ServerProcess


@dataclass
class SdkServer:
    url: str
    api_key: str
    fake: FakeStripeServer


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sdk_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkServer]:
    directory = tmp_path_factory.mktemp("sdk")
    if request.param == "sqlite":  # a copy of the session's migrated file: no migrations run again here
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), directory / "tallybook.db")
        database_url = f"sqlite:///{directory / 'tallybook.db'}"
    else:
        database_url = _postgres_database()
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    empty_all_tables(runtime)
    runtime.store.close()
    with FakeStripeServer() as fake:
        stripe_section = f"stripe:\n  enabled: true\n  api_base: {fake.url}\n  webhook_secret: whsec_sdk_tests\n"
        server = ServerProcess(
            directory, database_url, extra_config=stripe_section, env={"STRIPE_API_KEY": fake.api_key}
        ).start()
        try:
            yield SdkServer(url=server.url, api_key=ADMIN_KEY, fake=fake)
        finally:
            output = server.stop()
        assert "Traceback" not in output, output
    assert not fake.state.server_errors, "\n".join(fake.state.server_errors)
