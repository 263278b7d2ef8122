# make train: create .venv, install, train the default model (configs/v36.py).
# make test:  create .venv, install with the test extra, run the suite on two workers (the 20 slowest tests listed).
# make install-check: tests/test_install.py, the Colab-like and bare installs (.ci/run runs both).
# make tensorboard: install TensorBoard into .venv once, and serve workdirs/ (LOGDIR=DIR).
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install -q --disable-pip-version-check
# The CPU build of PyTorch; other versions pull a several-GB CUDA build.
TORCH   ?= torch==2.13.0
CONFIG  ?= configs/v36.py
WORKDIR ?= workdirs/$(basename $(notdir $(CONFIG)))
# Local IDX files when present (MNIST_DIR, or ../shared/mnist); else TFDS, whose
# first download needs the tfds extra (TensorFlow included). IDX files need neither.
DATA_DIR ?= $(or $(MNIST_DIR),$(wildcard ../shared/mnist))
CORE    := $(VENV)/.core$(if $(DATA_DIR),,-tfds)
ARGS    ?=
LOGDIR  ?= workdirs

.PHONY: train test install-check tensorboard mutants clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.core: pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.core-tfds: pyproject.toml | $(PY)
	$(PIP) -e '.[tfds]'
	touch $@ $(VENV)/.core

$(VENV)/.test: pyproject.toml | $(PY)
	$(PIP) '$(TORCH)'
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.core

train: $(CORE)
	$(PY) -m mnist_flax.main --config=$(CONFIG) --workdir=$(WORKDIR) \
	  $(if $(DATA_DIR),--config.data_dir=$(DATA_DIR)) $(ARGS)

test: $(VENV)/.test
	$(PY) -m pytest -q -ra -n 2 --dist loadfile --durations=20 -m 'not install' tests

install-check: $(VENV)/.test
	$(PY) -m pytest -q -ra -m install tests

$(VENV)/.tensorboard: | $(PY)
	$(PIP) tensorboard
	touch $@

tensorboard: $(VENV)/.tensorboard
	$(VENV)/bin/tensorboard --logdir $(LOGDIR)

# Plants known bugs one at a time and fails if a test written for one misses it.
mutants: $(VENV)/.test
	$(PY) tools/mutants.py

clean:
	rm -rf $(VENV) workdirs
