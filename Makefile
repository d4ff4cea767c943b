# The two commands of the README: `make demo` (set up, then the main job) and `make test` (set up, then the tests).
VENV ?= .venv
STAMP := $(VENV)/.igrec-setup

.PHONY: setup demo test lint lock stack-up stack-down

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock deploy/setup.sh deploy/maven/kafka/pom.xml deploy/maven/neo4j/pom.xml
	bash deploy/setup.sh
	touch $@

demo: setup
	$(VENV)/bin/igrec demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -q -o requirements.lock --python-version 3.11

stack-up: setup
	$(VENV)/bin/igrec stack up

stack-down:
	$(VENV)/bin/igrec stack down
