#!/bin/sh
# The runner of the stand-in: a buildbot worker that connects to the forge by its name over
# Flatnet (forge:9989) and stays connected; the master hands it each push's workflow, which it
# runs with act, the engine forgejo-runner is forked from.
#
# With DOCKER_HOST (the host's Podman API socket, mounted in) and JOB_NETWORK (the Flatnet
# network), act starts each job in a container of its own on that network, as Forgejo's runner
# does with `container.network`: the runner runs no step itself. Without them (where there is
# no Podman, as on the simulated hosts of daemon/tests/forge_standin.rs), the steps run in the
# runner itself (act's `-self-hosted`).
set -eu
export PATH="/opt/forge/bin:$PATH"
if [ -n "${DOCKER_HOST:-}" ]; then
    : "${JOB_NETWORK:?set JOB_NETWORK to the Flatnet network the job containers join}"
    # No Podman socket in the job (--container-daemon-socket -); the image is local.
    ACT_JOBS="-P docker=localhost/flatnet-job:latest --pull=false --network $JOB_NETWORK --container-daemon-socket -"
else
    ACT_JOBS="-P docker=-self-hosted"
fi
export ACT_JOBS
buildbot-worker create-worker -q /srv/worker "${FORGE:-forge}:9989" runner "${RUNNER_SECRET:-flatnet-runner}"
exec buildbot-worker start --nodaemon /srv/worker
