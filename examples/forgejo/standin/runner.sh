#!/bin/sh
# The runner of the stand-in: a buildbot worker that connects to the forge by its name over
# Flatnet (forge:9989) and stays connected; the master hands it each push's workflow, which it
# runs with act, the engine forgejo-runner is forked from.
set -eu
export PATH=/opt/forge/bin:$PATH
buildbot-worker create-worker -q /srv/worker "${FORGE:-forge}:9989" runner "${RUNNER_SECRET:-flatnet-runner}"
exec buildbot-worker start --nodaemon /srv/worker
