#!/bin/sh
# The forge of the stand-in, in one container: git over smart HTTP on port 3000 (dulwich),
# serving flatnet/hello.git as Forgejo would, and a buildbot master with its web UI and REST API
# on 8010 and the worker port 9989. A push runs the repository's post-receive hook, which tells
# the master (its change hook), which hands the workflow to the runner: what Forgejo does with
# a push and its runner.
set -eu
export PATH="/opt/forge/bin:$PATH"
repo=/srv/git/hello.git
git init -q --bare -b main "$repo"
cp /opt/standin/post-receive.py "$repo/hooks/post-receive"
buildbot create-master -q /srv/master
cp /opt/standin/master.cfg /srv/master/master.cfg
python3 /opt/standin/git-http.py "$repo" flatnet/hello 3000 &
exec buildbot start --nodaemon /srv/master
