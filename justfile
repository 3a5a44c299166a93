# Job Orchestrator — `just` lists the recipes.

set positional-arguments

# List the recipes
[group('help')]
default:
    @just --list --unsorted

# Run the gateway (embedded PostgreSQL unless DATABASE_URL is set)
[group('run')]
serve *args:
    orchestrator serve "$@"

# Start everything, run a mixed load across three tenants, show it live, then a summary
[group('run')]
demo *args:
    python -m examples.demo "$@"

# Run the whole test suite against a real PostgreSQL (embedded unless DATABASE_URL is set)
[group('dev')]
test *args:
    python -m pytest "$@"

# Lint, format check, strict types, import contracts and schema drift
[group('dev')]
check:
    ruff check .
    ruff format --check .
    mypy
    lint-imports
    orchestrator db-dump --check

# Format the code
[group('dev')]
fmt:
    ruff format .
    ruff check --fix .

# Measure latency and throughput (`just bench --quick` for a short run)
[group('dev')]
bench *args:
    python -m bench "$@"

# Audit every guarantee against a real server and print a table (`just verify --quick` for a short run)
[group('dev')]
verify *args:
    python -m bench.verify "$@"

# Migrate the database (DATABASE_URL, or the embedded one in ORCH_DATA_DIR)
[group('db')]
migrate:
    orchestrator migrate

# Regenerate db/schema.sql from the migrations
[group('db')]
db-dump:
    orchestrator db-dump

# Delete the local data folder (the embedded database and the admin token); refused while in use
[group('db')]
reset:
    orchestrator reset

# Build the image and start the whole product in Docker (writes deploy/.env with fresh secrets when missing)
[group('deploy')]
up *args:
    #!/usr/bin/env sh
    set -eu
    cd deploy
    if [ ! -f .env ]; then
        umask 077
        secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
        printf 'COMPOSE_PROJECT_NAME=orchestrator\nPOSTGRES_PASSWORD=%s\nORCH_ADMIN_TOKEN=%s\nGRAFANA_ADMIN_PASSWORD=%s\n' \
            "$(secret)" "$(secret)" "$(secret)" > .env
        echo "wrote deploy/.env: the admin token and Grafana's admin password are in it"
    fi
    docker compose up --build --detach "$@"

# Stop the Docker deployment (`just down -v` also deletes its database and worker key)
[group('deploy')]
down *args:
    cd deploy && docker compose down "$@"

# Follow the Docker deployment's logs (`just logs gateway` for one service)
[group('deploy')]
logs *args:
    cd deploy && docker compose logs --follow "$@"
