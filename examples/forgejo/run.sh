#!/usr/bin/env bash
# Forgejo + its runner over Flatnet, end to end, for a machine whose Podman can pull images:
# a Flatnet network; Forgejo on it (web UI on 127.0.0.1 only); a runner registered offline,
# reaching Forgejo by name over Flatnet, shown online by Forgejo's runner list; a public
# repository pushed with .forgejo/workflows/hello.yml; the job run in a container of its own on
# the Flatnet network (the runner drives this host's Podman through its API socket), cloning the
# repository from Forgejo by name and saying "Hello from Flatnet". Exits 0 only then, printing
# each stage and where to look when one fails.
#
#   examples/forgejo/run.sh cni|netavark      (needs root and Flatnet installed)
#
# cni:      Podman with network_backend = "cni" (Debian 12's Podman 4.3) and flatnet-cni.
# netavark: Podman >= 4.5 with netavark and the `flatnet` plugin (docs/podman.md). Debian 12's
#           Podman 4.3 cannot load netavark plugins: there, use `cni`.
# PODMAN picks another Podman, e.g. PODMAN="nsenter --mount=/run/flatnet-trixie/mnt -- podman"
# (the trixie chroot's, made by scripts/setup-chroot.sh).
# The API calls are listed in examples/forgejo/README.md. It cannot run on the project's CI
# machines (no registry there): CI runs the stand-in in standin/ instead.
set -euo pipefail

BACKEND=${1:-}
NETWORK=${FLATNET_NETWORK:-flatnet-forgejo}
SUBNET=${FLATNET_SUBNET:-10.80.0.0/24}
FORGEJO_IMAGE=codeberg.org/forgejo/forgejo:15
RUNNER_IMAGE=code.forgejo.org/forgejo/runner:12
JOB_IMAGE=docker.io/library/node:20-bookworm
WEB_PORT=${WEB_PORT:-3000}
ADMIN=flatnet-admin
PASSWORD=${FORGEJO_PASSWORD:-flatnet-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}
SECRET=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')    # the runner's shared secret: 40 hex
SOCKET=/run/$NETWORK-podman.sock
HERE=$(cd "$(dirname "$0")" && pwd)
read -ra podman <<< "${PODMAN:-podman}"
current=start

stage() { current=$1; printf '==> [%s] %s\n' "$1" "$2"; }
fail() {
    printf 'FAILED at stage "%s": %s\n' "$current" "$1" >&2
    printf 'look at: %s\n' "$2" >&2
    exit 1
}
# Polls a command until it succeeds, for at most $1 seconds.
wait_until() {
    local limit=$1
    shift
    for _ in $(seq "$limit"); do
        "$@" > /dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}
api() { curl -sf -u "$ADMIN:$PASSWORD" "http://127.0.0.1:$WEB_PORT/api/v1/$1"; }

[ "$(id -u)" = 0 ] || fail "run as root" "sudo $0 $BACKEND"
case "$BACKEND" in
    cni | netavark) ;;
    *) fail "give the backend: cni or netavark" "podman info --format '{{.Host.NetworkBackend}}'" ;;
esac
have=$("${podman[@]}" info --format '{{.Host.NetworkBackend}}' 2> /dev/null) \
    || fail "podman info failed" "${podman[*]} info"
[ "$have" = "$BACKEND" ] || fail "this Podman's network backend is '$have', not '$BACKEND'" \
    "network_backend in containers.conf; Debian 12's Podman 4.3 has only cni (it cannot load netavark plugins)"

stage network "a Flatnet network ($BACKEND backend): $NETWORK, $SUBNET"
"${podman[@]}" rm -f -t 0 forgejo forgejo-runner > /dev/null 2>&1 || true
if [ "$BACKEND" = netavark ]; then
    "${podman[@]}" network exists "$NETWORK" \
        || "${podman[@]}" network create -d flatnet --subnet "$SUBNET" "$NETWORK" > /dev/null \
        || fail "podman network create -d flatnet" "the flatnet plugin in netavark's plugin directory (docs/podman.md)"
else
    sed -e "s/\"name\": \"flatnet\"/\"name\": \"$NETWORK\"/" -e "s#10.77.0.0/16#$SUBNET#" \
        "$HERE/../cni/flatnet.conflist" > "/etc/cni/net.d/$NETWORK.conflist"
fi

stage forge "Forgejo on the network, its web UI on http://127.0.0.1:$WEB_PORT/"
# Pushing creates the repository, public (Forgejo's default would make it private).
"${podman[@]}" run -d --name forgejo --network "$NETWORK" -p "127.0.0.1:$WEB_PORT:3000" \
    -e FORGEJO__security__INSTALL_LOCK=true \
    -e FORGEJO__server__ROOT_URL=http://forgejo:3000/ \
    -e FORGEJO__repository__ENABLE_PUSH_CREATE_USER=true \
    -e FORGEJO__repository__DEFAULT_PUSH_CREATE_PRIVATE=false \
    -e FORGEJO__actions__ENABLED=true \
    "$FORGEJO_IMAGE" > /dev/null || fail "podman run forgejo" "${podman[*]} pull $FORGEJO_IMAGE"
wait_until 120 curl -sf "http://127.0.0.1:$WEB_PORT/api/healthz" \
    || fail "Forgejo did not answer /api/healthz" "${podman[*]} logs forgejo"
"${podman[@]}" exec -u git forgejo forgejo admin user create --admin --username "$ADMIN" \
    --password "$PASSWORD" --email "$ADMIN@localhost" --must-change-password=false > /dev/null \
    || fail "creating the admin user" "${podman[*]} logs forgejo"
"${podman[@]}" exec -u git forgejo forgejo forgejo-cli actions register --name flatnet-runner \
    --labels docker --secret "$SECRET" > /dev/null \
    || fail "registering the runner" "${podman[*]} logs forgejo"

stage runner "the runner, registered offline, reaching Forgejo by name over Flatnet"
# The runner starts each job's container through this Podman's Docker-compatible API, on the
# Flatnet network (container.network); docker_host "-" keeps the socket out of the jobs.
rm -f "$SOCKET"
"${podman[@]}" system service --time=0 "unix://$SOCKET" > /dev/null 2>&1 &
service=$!
trap 'kill "$service" 2> /dev/null || true' EXIT
wait_until 30 test -S "$SOCKET" || fail "podman system service did not listen on $SOCKET" \
    "${podman[*]} system service --log-level=debug --time=0 unix://$SOCKET"
"${podman[@]}" pull -q "$JOB_IMAGE" > /dev/null || fail "pulling the job image" "${podman[*]} pull $JOB_IMAGE"
"${podman[@]}" run -d --name forgejo-runner --network "$NETWORK" \
    -v "$SOCKET:/var/run/docker.sock" -e DOCKER_HOST=unix:///var/run/docker.sock \
    "$RUNNER_IMAGE" sh -c "
    cd /data &&
    forgejo-runner create-runner-file --instance http://forgejo:3000 --name flatnet-runner --secret $SECRET &&
    printf '%s\n' 'runner:' '  file: .runner' '  capacity: 1' \
        '  labels: [\"docker:docker://$JOB_IMAGE\"]' \
        'container:' '  network: \"$NETWORK\"' '  docker_host: \"-\"' > config.yml &&
    exec forgejo-runner --config config.yml daemon" > /dev/null \
    || fail "podman run forgejo-runner" "${podman[*]} pull $RUNNER_IMAGE"

stage online "Forgejo lists the runner as online"
online() {
    api admin/actions/runners | python3 -c '
import json, sys
found = json.load(sys.stdin)
runners = found if isinstance(found, list) else found.get("runners", [])
states = [r.get("status") for r in runners if r.get("name") == "flatnet-runner"]
sys.exit(0 if states and states[0] not in ("offline", "unknown") else 1)'
}
wait_until 60 online || fail "the runner is not online" \
    "${podman[*]} logs forgejo-runner; http://127.0.0.1:$WEB_PORT/-/admin/actions/runners"

stage push "a public repository with .forgejo/workflows/hello.yml, pushed over HTTP"
work=$(mktemp -d)
cp -r "$HERE/repo/.forgejo" "$work/"
git -C "$work" init -q -b main
git -C "$work" add .
git -C "$work" -c user.name=flatnet -c user.email=flatnet@localhost commit -q -m 'Hello from Flatnet'
git -C "$work" push -q "http://$ADMIN:$PASSWORD@127.0.0.1:$WEB_PORT/$ADMIN/hello.git" main \
    || fail "git push" "${podman[*]} logs forgejo"

# The newest run of the repository: "RUN_NUMBER STATUS" (waiting, running, success, ...).
newest_run() {
    api "repos/$ADMIN/hello/actions/tasks" | python3 -c '
import json, sys
run = json.load(sys.stdin)["workflow_runs"][0]
print(run["run_number"], run["status"])'
}
wait_until 60 newest_run || fail "no workflow run appeared" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions"
state=unknown
for _ in $(seq 300); do
    read -r run state <<< "$(newest_run 2> /dev/null || echo 0 unknown)"
    case "$state" in success | failure | cancelled | skipped) break ;; esac
    sleep 1
done
stage "done" "the job finished: $state"
[ "$state" = success ] || fail "the job ended as '$state'" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions/runs/$run"
# The repository is public: its job log needs no credentials.
curl -sf "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions/runs/$run/jobs/0/logs" > "$work/job.log" \
    || fail "reading the job's log" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions/runs/$run"
grep -q "Hello from Flatnet" "$work/job.log" || fail "the log lacks 'Hello from Flatnet'" "$work/job.log"
where=$(grep -o 'job container [^ ]* at [0-9.]*' "$work/job.log" | head -1 | sed 's/.* at //')
printf '==> the job ran in its own container at %s and said: Hello from Flatnet\n' "$where"
printf '    web UI: http://127.0.0.1:%s/ (user %s, password %s)\n' "$WEB_PORT" "$ADMIN" "$PASSWORD"
printf '    remove: %s rm -f forgejo forgejo-runner\n' "${podman[*]}"
