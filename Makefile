# crmsync developer commands. `make` alone lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/example.yaml
KAFKA := $(PYTHON) deploy/kafka/local_kafka.py
# The demo source's bearer token and the admin API's; any values work locally.
export CRMSYNC_DEMO_TOKEN ?= demo-token
export CRMSYNC_ADMIN_TOKEN ?= admin-token
export CRMSYNC_READ_TOKEN ?= read-token
# The secret the demo's webhook destination signs with (its local receiver checks it).
export CRMSYNC_DEMO_WEBHOOK_SECRET ?= whsec_Y3Jtc3luYy1kZW1vLXdlYmhvb2stc2VjcmV0
# The token the demo's fake HubSpot expects (it is a fake: nothing real is behind it).
export CRMSYNC_DEMO_HUBSPOT_TOKEN ?= pat-na1-11111111-2222-3333-4444-555555555555

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "crmsync needs Python 3.11+"; exit 1; }
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	@$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

.PHONY: install
install: $(STAMP) ## Create the virtualenv and install crmsync with its pinned dependencies

.PHONY: kafka-jars
kafka-jars: ## Fetch the Apache Kafka jars with Maven (once)
	@$(KAFKA) fetch

.PHONY: registry-jars
registry-jars: ## Fetch the local Schema Registry (Apicurio Registry) with Maven (once)
	@$(PYTHON) deploy/registry/local_registry.py fetch >/dev/null

.PHONY: kafka-up
kafka-up: kafka-jars ## Start the local single-broker KRaft cluster on 127.0.0.1:9092
	@$(KAFKA) start --name local --port 9092

.PHONY: kafka-down
kafka-down: ## Stop the local Kafka cluster
	@$(KAFKA) stop --name local

.PHONY: run
run: install kafka-up ## Start Kafka, a fake HubSpot, a webhook receiver and the five services on the example config
	@$(BIN)/python -m services.devstack up --config $(CONFIG) --fake hubspot=8090,change-every=5 --fake webhook_receiver=8095
	@echo
	@echo "crmsync is running (logs in var/log/). The sync console, with the fake HubSpot's"
	@echo "contacts being edited every 5 s (sign in with $(CRMSYNC_READ_TOKEN), or $(CRMSYNC_ADMIN_TOKEN) to act):"
	@echo
	@echo "  http://127.0.0.1:8084/"
	@echo
	@echo "Send a contact to the demo source:"
	@echo
	@echo "  curl -sS -X POST http://127.0.0.1:8080/webhooks/demo \\"
	@echo "    -H 'Authorization: Bearer $(CRMSYNC_DEMO_TOKEN)' -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"id\": \"1001\", \"updated_at\": \"2026-11-23T09:00:00Z\", \"email\": \"ada@example.com\", \"first_name\": \"Ada\"}'"
	@echo
	@echo "then look it up:"
	@echo
	@echo "  $(BIN)/crmsync --config $(CONFIG) profile get --email ada@example.com"
	@echo "  CRMSYNC_READ_TOKEN=$(CRMSYNC_READ_TOKEN) $(BIN)/crmsync --config $(CONFIG) logs ada@example.com"
	@echo "  curl -sS -H 'Authorization: Bearer $(CRMSYNC_READ_TOKEN)' 'http://127.0.0.1:8082/profiles?email=ada@example.com'"
	@echo
	@echo "and what went out to the demo's webhook destination (signed Standard Webhooks):"
	@echo
	@echo "  curl -sS http://127.0.0.1:8095/received"
	@echo
	@echo "Backfill the demo HubSpot (a fake with 1,000 contacts) and watch its progress:"
	@echo
	@echo "  export CRMSYNC_ADMIN_TOKEN=$(CRMSYNC_ADMIN_TOKEN)"
	@echo "  $(BIN)/crmsync --config $(CONFIG) fullsync start hubspot-demo --wait"
	@echo "  $(BIN)/crmsync --config $(CONFIG) status"
	@echo "  $(BIN)/crmsync --config $(CONFIG) profile get --id hubspot-demo:1000"
	@echo
	@echo "See what a backfill would send the webhook destination, then send it every profile:"
	@echo
	@echo "  export CRMSYNC_DEMO_WEBHOOK_SECRET=$(CRMSYNC_DEMO_WEBHOOK_SECRET)"
	@echo "  $(BIN)/crmsync --config $(CONFIG) destination preview marketing-webhook --limit 2"
	@echo "  $(BIN)/crmsync --config $(CONFIG) destination push marketing-webhook --wait"
	@echo
	@echo "Health and metrics: http://127.0.0.1:808{0,1,2,3,4}/readyz and /metrics. Stop with: make stop"

.PHONY: stop
stop: ## Stop the services and Kafka
	@test ! -x $(BIN)/python || $(BIN)/python -m services.devstack down
	@$(KAFKA) stop --name local

.PHONY: test
test: install kafka-jars registry-jars lint schemas-check ## Lint, schema check, then the whole suite (starts its own broker)
	@$(BIN)/pytest

.PHONY: test-unit
test-unit: install ## Run only the unit tests (nothing needs to be running)
	@$(BIN)/pytest -m unit

.PHONY: lint
lint: install ## ruff and mypy --strict
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

.PHONY: fmt
fmt: install ## Format the code
	@$(BIN)/ruff check --fix-only --quiet .
	@$(BIN)/ruff format .

.PHONY: schemas-check
schemas-check: install ## Fail when a schema change would break readers of an earlier version
	@$(BIN)/python -m tools.schemas_check

.PHONY: bench
bench: install kafka-jars ## Run the benchmarks; figures go to bench/results/
	@for b in ingest_webhooks fullsync_pull fullsync_to_store csv_import e2e_webhook_to_store mapper_throughput writer_store postgres_ceiling outbound_delivery e2e_compare; do \
		echo "== bench/$$b.py"; $(BIN)/python -m bench.$$b || exit 1; done

SOAK_MINUTES ?= 30
.PHONY: soak
soak: install kafka-jars ## The fault checks with random faults and kill times for SOAK_MINUTES (default 30)
	@$(BIN)/python -m tests.faults.soak --minutes $(SOAK_MINUTES)

.PHONY: clean
clean: stop ## Stop everything and delete local data (var/)
	@rm -rf var
