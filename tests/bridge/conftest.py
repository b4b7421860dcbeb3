try:  # Redis + API processes, shared with the service tests; absent from the bridge-only environments
    from tests.services.conftest import stack  # noqa: F401  (e.g. .venv-jazzy: ROS, numpy and the store only)
except ImportError:
    pass
