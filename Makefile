# The two set-up commands of the README's quickstart, and the developer's tools.
.PHONY: demo test lint bench-merge bench-cdc bench-ingest bench-quality

demo:
	scripts/venv.sh runtime
	.venv/bin/headwater demo

test:
	scripts/test.sh

lint:
	scripts/venv.sh dev
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

bench-merge:
	scripts/venv.sh dev
	.venv/bin/python bench/merge/run.py

bench-ingest:
	scripts/venv.sh dev
	.venv/bin/python bench/ingest/run.py

bench-quality:
	scripts/venv.sh dev
	.venv/bin/python bench/quality/run.py

bench-cdc:
	scripts/venv.sh dev
	.venv/bin/python bench/cdc/run.py
