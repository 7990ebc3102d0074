# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 5000
PG_DSN ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: demo test lint services browser translations clean bench bench-full soak

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo CRM with the plugin on SQLite in instance/, the sandbox SMTP sink, and seeded data.
demo: $(STAMP)
	$(PY) -m plugin.demo --port $(PORT)

# The whole suite, on SQLite and on PostgreSQL (each run in its own database).
test: $(STAMP) services browser lint
	$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile -m "not slow"
	MARKETING_TEST_DATABASE=postgres $(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile -m "not browser and not slow"

# Long kill and soak tests (100,000-recipient campaign killed 20 times, ...), on both databases.
soak: $(STAMP) services
	$(PY) -m pytest -p no:cacheprovider -m slow
	MARKETING_TEST_DATABASE=postgres $(PY) -m pytest -p no:cacheprovider -m slow

# Benchmarks print ratios against a floor measured in the same run (bench/README.md).
BENCHES ?= audience dispatch smtp memory scheduler_lateness stats
BENCH_DBS ?= sqlite postgres
# The benchmark extra: the SMTP peers (django-post-office, Flask-Mailman, mailmerge).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) services
	@fail=0; for b in $(BENCHES); do for d in $(BENCH_DBS); do \
	  if test $$b = audience; then test $$d = sqlite || continue; db=both; else db=$$d; fi; \
	  $(PY) -m bench.$$b --profile quick --db $$db || fail=1; \
	done; done; exit $$fail

bench-full: $(BENCH_STAMP) services
	@fail=0; for b in $(BENCHES); do for d in $(BENCH_DBS); do \
	  if test $$b = audience; then test $$d = sqlite || continue; db=both; else db=$$d; fi; \
	  $(PY) -m bench.$$b --profile full --db $$db || fail=1; \
	done; done; exit $$fail

lint: $(STAMP)
	$(VENV)/bin/ruff check plugin tests $$(test -d bench && echo bench)

# PostgreSQL and Redis are normally running; start them when they are not.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

# Debian's Chromium for the browser tests (Playwright cannot download browsers here), and CJK fonts
# so screenshots of Chinese pages are readable.
browser:
	@command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q . || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

# Extract the plugin's messages, merge them into the Chinese catalogue, compile it.
translations: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -k mkt_ -k _ -k _l -k gettext -k lazy_gettext -k ngettext:1,2 -k mkt_ngettext:1,2 \
	  --no-location --sort-output -o plugin/translations/marketing.pot plugin
	test -f plugin/translations/zh_Hans_CN/LC_MESSAGES/marketing.po || \
	  $(VENV)/bin/pybabel init -D marketing -l zh_Hans_CN -i plugin/translations/marketing.pot -d plugin/translations
	$(VENV)/bin/pybabel update -D marketing -l zh_Hans_CN --no-fuzzy-matching \
	  -i plugin/translations/marketing.pot -d plugin/translations
	$(VENV)/bin/pybabel compile -D marketing -d plugin/translations

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
