from tests.services.conftest import stack  # noqa: F401  (Redis + API processes, shared with the service tests)
