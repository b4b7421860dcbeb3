# Two commands for a newcomer: `make demo` and `make test`. Both set up what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# The bridge on ROS 2 Jazzy (the LTS most ros2_control labs run) as well as on Kilted (.venv): a small
# second environment with the Jazzy wheels, the bridge's own needs and no torch (~45 s, ~0.3 GB), and
# the bridge tests that need no simulator or service stack.
JAZZY := .venv-jazzy
JAZZY_STAMP := $(JAZZY)/.setup-stamp
JAZZY_TESTS := tests/bridge/test_ros2_cell.py tests/bridge/test_arbitration.py \
	tests/bridge/test_bridge_dds.py::test_robot_ids_name_ros_namespaces \
	tests/bridge/test_bridge_dds.py::test_recorded_ticks_match_published_samples_and_commands_with_known_stamps \
	tests/bridge/test_bridge_dds.py::test_compressed_cameras_in_joint_trajectory_out
APT_PACKAGES := redis-server ffmpeg libosmesa6 chromium chromium-driver postgresql
# The first interpreter that really is Python 3.12 (pyenv shims answer for versions they do not select).
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: setup apt demo demo-store test test-fast test-jazzy bench clean-venv

setup: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found (looked for python3.12 and ~/.pyenv/versions/3.12*)"; exit 1; }
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The main job: record -> train -> deploy rounds on simulated arms through the real stack (Redis, API,
# worker, inference server, ROS 2 bridges). ARGS: e.g. ARGS="--quick", "--rounds 2 --robots 3", "--fresh";
# "--policy act" or "--policy smolvla-tiny": a LeRobot backbone on a rendered camera ("--camera 96x128").
DEMO := demo_out
demo: setup
	$(VENV)/bin/recap demo --out $(DEMO) $(ARGS)

# The data layer on its own: recording, a SIGKILL mid-episode, fsck --repair, LeRobot v3 export.
demo-store: setup
	rm -rf $(DEMO)/store-walkthrough && mkdir -p $(DEMO)/store-walkthrough
	$(VENV)/bin/recap data record-synthetic --store $(DEMO)/store-walkthrough/store --episodes 3 --ticks 150 --fps 30
	@echo "--- recording one more episode and killing the recorder with SIGKILL mid-episode"
	@$(VENV)/bin/recap data record-synthetic --store $(DEMO)/store-walkthrough/store --episodes 1 --ticks 600 --fps 30 & pid=$$!; \
	  sleep 8; kill -9 $$pid; wait $$pid 2>/dev/null; true
	$(VENV)/bin/recap data fsck --store $(DEMO)/store-walkthrough/store || true
	$(VENV)/bin/recap data fsck --store $(DEMO)/store-walkthrough/store --repair
	$(VENV)/bin/recap data ls --store $(DEMO)/store-walkthrough/store
	$(VENV)/bin/recap data export $(DEMO)/store-walkthrough/lerobot --store $(DEMO)/store-walkthrough/store --status complete

test: setup $(JAZZY_STAMP)
	$(VENV)/bin/pytest -q --durations=20 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-jazzy

$(JAZZY_STAMP): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found"; exit 1; }
	@test -x $(JAZZY)/bin/python || $(PYTHON312) -m venv $(JAZZY)
	$(JAZZY)/bin/python -m pip install -q -e '.[robot,ros-jazzy]' 'pytest>=8,<10' 'pytest-timeout>=2.3,<3' 'psutil>=5.9,<8'
	@touch $(JAZZY_STAMP)

test-jazzy: $(JAZZY_STAMP)
	$(JAZZY)/bin/python -c 'import rclpy, importlib.metadata as m; print("bridge tests on ROS 2 Jazzy, rclpy", m.version("ros-jazzy-rclpy"))'
	$(JAZZY)/bin/pytest -q -p no:cacheprovider $(JAZZY_TESTS)

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.store $(ARGS)

clean-venv:
	rm -rf $(VENV) $(JAZZY)
