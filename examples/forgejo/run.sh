#!/usr/bin/env bash
# Forgejo + its runner over Flatnet, end to end, for a machine whose Podman can pull images:
# a Flatnet network, Forgejo (web UI published on the host), a runner registered and online
# that reaches Forgejo by name over Flatnet, a repository pushed with
# .forgejo/workflows/hello.yml, and the job's log holding "Hello from Flatnet". Exits 0 only
# then, printing each stage and where to look when one fails.
#
#   examples/forgejo/run.sh [netavark|cni]      (default: netavark; needs root)
#
# netavark: Podman >= 4.5 with the `flatnet` plugin installed (docs/podman.md).
# cni:      Podman with network_backend = "cni" and flatnet-cni installed.
# It cannot run on the project's own CI machines (no registry there): CI runs the stand-in in
# examples/forgejo/standin/ instead (tests/e2e_forge.rs), over the same network behaviour.
set -euo pipefail

BACKEND=${1:-netavark}
NETWORK=${FLATNET_NETWORK:-flatnet-forgejo}
SUBNET=${FLATNET_SUBNET:-10.80.0.0/24}
FORGEJO_IMAGE=codeberg.org/forgejo/forgejo:11
RUNNER_IMAGE=code.forgejo.org/forgejo/runner:12
WEB_PORT=${WEB_PORT:-3000}
ADMIN=flatnet-admin
PASSWORD=${FORGEJO_PASSWORD:-flatnet-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}
SECRET=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')    # the runner's shared secret: 40 hex
HERE=$(cd "$(dirname "$0")" && pwd)
current=start

stage() { current=$1; printf '==> [%s] %s\n' "$1" "$2"; }
fail() {
    printf 'FAILED at stage "%s": %s\n' "$current" "$1" >&2
    printf 'look at: %s\n' "$2" >&2
    exit 1
}
# Polls a command until it succeeds, for at most $1 seconds.
wait_until() {
    local limit=$1; shift
    for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}
api() { curl -sf -u "$ADMIN:$PASSWORD" "http://127.0.0.1:$WEB_PORT/api/v1/$1"; }

[ "$(id -u)" = 0 ] || fail "run as root" "sudo $0 $BACKEND"
case "$BACKEND" in netavark|cni) ;; *) fail "backend is netavark or cni" "$0 --help" ;; esac

stage network "a Flatnet network ($BACKEND backend): $NETWORK, $SUBNET"
podman rm -f -t 0 forgejo forgejo-runner >/dev/null 2>&1 || true
if [ "$BACKEND" = netavark ]; then
    podman network exists "$NETWORK" || podman network create -d flatnet --subnet "$SUBNET" "$NETWORK" >/dev/null \
        || fail "podman network create" "podman info --format '{{.Host.NetworkBackend}}' (must be netavark); flatnet in a netavark plugin directory"
else
    sed -e "s/\"name\": \"flatnet\"/\"name\": \"$NETWORK\"/" -e "s#10.77.0.0/16#$SUBNET#" \
        "$HERE/../cni/flatnet.conflist" > "/etc/cni/net.d/$NETWORK.conflist"
fi

stage forge "Forgejo on the network, its web UI on http://127.0.0.1:$WEB_PORT/"
podman run -d --name forgejo --network "$NETWORK" -p "$WEB_PORT:3000" \
    -e FORGEJO__security__INSTALL_LOCK=true \
    -e FORGEJO__server__ROOT_URL=http://forgejo:3000/ \
    -e FORGEJO__repository__ENABLE_PUSH_CREATE_USER=true \
    -e FORGEJO__actions__ENABLED=true \
    "$FORGEJO_IMAGE" >/dev/null || fail "podman run forgejo" "podman pull $FORGEJO_IMAGE"
wait_until 120 curl -sf "http://127.0.0.1:$WEB_PORT/api/healthz" \
    || fail "Forgejo did not answer /api/healthz" "podman logs forgejo"
podman exec -u git forgejo forgejo admin user create --admin --username "$ADMIN" \
    --password "$PASSWORD" --email "$ADMIN@localhost" --must-change-password=false >/dev/null \
    || fail "creating the admin user" "podman logs forgejo"
podman exec -u git forgejo forgejo forgejo-cli actions register --name flatnet-runner \
    --labels docker --secret "$SECRET" >/dev/null \
    || fail "registering the runner" "podman logs forgejo"

stage runner "the runner, registered offline, reaching Forgejo by name over Flatnet"
# Labels docker:host run jobs inside the runner container itself (no Docker in it).
podman run -d --name forgejo-runner --network "$NETWORK" "$RUNNER_IMAGE" sh -c "
    cd /data &&
    forgejo-runner create-runner-file --instance http://forgejo:3000 --name flatnet-runner --secret $SECRET &&
    forgejo-runner generate-config > config.yml &&
    sed -i 's/^  labels: .*/  labels: [\"docker:host\"]/' config.yml &&
    exec forgejo-runner --config config.yml daemon" >/dev/null \
    || fail "podman run forgejo-runner" "podman pull $RUNNER_IMAGE"
wait_until 60 sh -c 'podman logs forgejo-runner 2>&1 | grep -q "declared successfully"' \
    || fail "the runner is not online" "podman logs forgejo-runner; http://127.0.0.1:$WEB_PORT/admin/actions/runners"

stage push "a repository with .forgejo/workflows/hello.yml, pushed over HTTP"
work=$(mktemp -d)
cp -r "$HERE/repo/.forgejo" "$work/"
git -C "$work" init -q -b main
git -C "$work" add .
git -C "$work" -c user.name=flatnet -c user.email=flatnet@localhost commit -q -m 'Hello from Flatnet'
git -C "$work" push -q "http://$ADMIN:$PASSWORD@127.0.0.1:$WEB_PORT/$ADMIN/hello.git" main \
    || fail "git push" "podman logs forgejo"

stage running "the workflow runs on the runner"
# The newest run's status: waiting, running, success, failure, ...
status() {
    api "repos/$ADMIN/hello/actions/tasks" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["workflow_runs"][0]["status"])'
}
wait_until 60 status || fail "no workflow run appeared" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions"

stage done "the job finishes"
for _ in $(seq 180); do
    state=$(status 2>/dev/null || echo unknown)
    case "$state" in success|failure|cancelled|skipped) break ;; esac
    sleep 1
done
[ "$state" = success ] || fail "the job ended as '$state'" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions/runs/1"
curl -sf -u "$ADMIN:$PASSWORD" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions/runs/1/jobs/0/logs" > "$work/job.log" \
    || fail "reading the job's log" "http://127.0.0.1:$WEB_PORT/$ADMIN/hello/actions/runs/1"
grep -q "Hello from Flatnet" "$work/job.log" \
    || fail "the log lacks 'Hello from Flatnet'" "$work/job.log"
printf '==> the job succeeded and said: %s\n' "$(grep -m1 'Hello from Flatnet' "$work/job.log")"
printf '    web UI: http://127.0.0.1:%s/ (user %s, password %s)\n' "$WEB_PORT" "$ADMIN" "$PASSWORD"
printf '    remove: podman rm -f forgejo forgejo-runner\n'
