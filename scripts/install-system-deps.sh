#!/usr/bin/env bash
# System packages latlab's tests use: a PostgreSQL server (the db tests start their own instance),
# GLPK and CBC executables (solvers for the pruning problems).
# Run as root on Debian/Ubuntu; elsewhere it only reports what is missing.
set -euo pipefail

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; }

missing=()
have_postgres || missing+=(postgresql)
command -v glpsol >/dev/null || missing+=(glpk-utils)   # MindtPy's MIP solver (pruning)
command -v cbc >/dev/null || missing+=(coinor-cbc)      # CBC executable (PuLP also bundles one)
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "system packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "system packages: missing ${missing[*]} (install them with your package manager;" \
       "the PostgreSQL tests are skipped without them)"
fi
