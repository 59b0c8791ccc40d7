"""Registers dfuhil's pytest layer (fixtures/) for the suites and the framework's own tests."""

pytest_plugins = [
    "fixtures.evidence",
    "fixtures.farm",
    "fixtures.boards",
    "fixtures.provisioning",
    "fixtures.mesh",
    "fixtures.mcuboot",
    "fixtures.report",
    "fixtures.retry",
]
