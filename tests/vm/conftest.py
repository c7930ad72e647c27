"""Fixtures of the VM tests: a real libvirtd, the tiny guest, the provider (tests/vm/README.md).

Where libvirt or qemu cannot run here (not root, no libvirt), every test that needs them is
skipped with the reason. In the sanitizer pass (USHER_SANITIZED=1) only the tests that run
Usher's own binaries run: the provider and the guest are not built by it, and their tests
would only boot the same VMs a second time.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tests/testlib.py

import vmenv  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
PROVIDER = os.path.join(REPO, "scripts", "usher-vm-libvirt")

# Test files that exercise no binary of Usher's build.
NOT_IN_SANITIZER_PASS = {"test_provider.py", "test_guest_boot.py"}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("USHER_SANITIZED") != "1":
        return
    skip = pytest.mark.skip(reason="no Usher binary under test here; runs in the plain pass")
    for item in items:
        if os.path.basename(str(item.fspath)) in NOT_IN_SANITIZER_PASS:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vm_env():
    """vmenv.setup(): libvirtd, pool, network, guest kernel/initrd, base image."""
    try:
        env = vmenv.setup()
    except vmenv.Unavailable as e:
        pytest.skip(str(e))
    return env
