"""OpenMeter's official Node SDK (@openmeter/sdk, pinned in tests/sdk/node/package-lock.json) against a
real `tallybook serve`: the script tests/sdk/node/openmeter.test.mjs drives it with `node --test`.

`make test` (and `.ci/run`) install the package from the npm registry with `npm ci`; run directly, this
test installs it on first use. Without node or npm it skips on a developer's machine and fails under
CI, which must run it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sdk.conftest import SdkServer

NODE_DIR = Path(__file__).parent / "node"
SDK_PACKAGE = NODE_DIR / "node_modules" / "@openmeter" / "sdk" / "package.json"

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed: the OpenMeter Node SDK test needs Node.js 20+ and npm"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Node SDK test. {reason}")
        pytest.skip(reason)
    return path


def _pinned_version() -> str:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/@openmeter/sdk"]["version"])


def _installed_version() -> str | None:
    if not SDK_PACKAGE.exists():
        return None
    return str(json.loads(SDK_PACKAGE.read_text())["version"])


def ensure_node_sdk() -> None:
    """`npm ci` unless the pinned version is already installed (a lock file keeps xdist workers apart)."""
    npm = _tool("npm")
    with (NODE_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() == _pinned_version():
            return
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    assert _installed_version() == _pinned_version()


def test_the_node_sdk_drives_tallybook(sdk_server: SdkServer, tmp_path: Path) -> None:
    node = _tool("node")
    ensure_node_sdk()
    fake = sdk_server.fake
    acme_in_stripe = fake.client().v1.customers.create({"name": "ACME, Inc."})
    result_file = tmp_path / "node-result.json"
    env = {
        **os.environ,
        "TALLYBOOK_URL": sdk_server.url,
        "TALLYBOOK_API_KEY": sdk_server.api_key,
        "STRIPE_CUSTOMER_ID": acme_in_stripe.id,
        "RESULT_FILE": str(result_file),
    }
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "openmeter.test.mjs"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the Node SDK test failed:\n{done.stdout}\n{done.stderr}"

    # What the SDK's checkout calls did in Stripe: a setup session for each customer, on the Stripe
    # customer linked through customers.apps.upsert for the first, on a new one for the second.
    sessions = json.loads(result_file.read_text())["sessions"]
    assert len(sessions) == 2
    for expected in sessions:
        session = fake.state.get("checkout.session", expected["sessionId"])
        assert session["mode"] == "setup"
        assert session["customer"] == expected["stripeCustomerId"]
        assert session["metadata"]["tallybook_customer_id"] == expected["customerId"]
    assert sessions[0]["stripeCustomerId"] == acme_in_stripe.id
    created = fake.state.get("customer", sessions[1]["stripeCustomerId"])
    assert created["name"] == "Globex"
    assert created["metadata"] == {"tallybook_customer_id": sessions[1]["customerId"]}
    # The session created with OpenMeter's spelling (successUrl, cancelUrl, clientReferenceId).
    spelled = fake.state.get("checkout.session", json.loads(result_file.read_text())["spelled"])
    assert spelled["success_url"] == "https://app.example.com/billing/done"
    assert spelled["cancel_url"] == "https://app.example.com/billing/cancelled"
    assert spelled["client_reference_id"] == "node-2" and spelled["customer"] == acme_in_stripe.id
